#include "filters/icap_codec.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "gateway/core/ascii.h"

namespace mailgate::filters {

namespace {

constexpr uint64_t kMaxChunk = uint64_t{1} << 40;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A decimal number (overflow-checked); false when s is not one.
bool parseDecimal(std::string_view s, uint64_t max, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (!ascii::isDigit(c)) return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (max - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

}  // namespace

// ------------------------------------------------------------------ requests

namespace {
std::string hostHeader(const IcapUrl& url) {
  const bool v6 = url.host.find(':') != std::string::npos;
  return "Host: " + (v6 ? "[" + url.host + "]" : url.host) + ":" + std::to_string(url.port) + "\r\n";
}
}  // namespace

std::string icapOptionsRequest(const IcapUrl& url) {
  std::string out = "OPTIONS " + url.uri() + " ICAP/1.0\r\n";
  out += hostHeader(url);
  out += "User-Agent: mailgate\r\n";
  out += "Encapsulated: null-body=0\r\n\r\n";
  return out;
}

std::string_view icapHttpHeader(IcapMethod method) {
  switch (method) {
    case IcapMethod::kRespmod:
      return "HTTP/1.1 200 OK\r\nContent-Type: message/rfc822\r\n\r\n";
    case IcapMethod::kReqmod:
      return "POST / HTTP/1.1\r\nHost: mailgate\r\nContent-Type: message/rfc822\r\n\r\n";
  }
  return {};
}

std::string icapModRequestHead(IcapMethod method, const IcapUrl& url, std::optional<uint64_t> preview,
                               bool allow204) {
  const std::string_view http = icapHttpHeader(method);
  const bool resp = method == IcapMethod::kRespmod;
  std::string out = resp ? "RESPMOD " : "REQMOD ";
  out += url.uri();
  out += " ICAP/1.0\r\n";
  out += hostHeader(url);
  out += "User-Agent: mailgate\r\n";
  if (allow204) out += "Allow: 204\r\n";
  if (preview) out += "Preview: " + std::to_string(*preview) + "\r\n";
  out += resp ? "Encapsulated: res-hdr=0, res-body=" : "Encapsulated: req-hdr=0, req-body=";
  out += std::to_string(http.size());
  out += "\r\n\r\n";
  out += http;
  return out;
}

void icapAppendChunk(std::string_view data, std::string* out) {
  if (data.empty()) return;
  char hex[24];
  const int n = std::snprintf(hex, sizeof hex, "%zx\r\n", data.size());
  out->append(hex, static_cast<size_t>(n));
  out->append(data);
  out->append("\r\n");
}

void icapAppendLastChunk(bool ieof, std::string* out) { out->append(ieof ? "0; ieof\r\n\r\n" : "0\r\n\r\n"); }

// ------------------------------------------------------------------ response

bool IcapResponse::offersMethod(std::string_view m) const {
  return std::any_of(methods.begin(), methods.end(), [&](const std::string& x) { return ascii::iequals(x, m); });
}

std::string IcapResponse::infectionName() const {
  if (!trim(virus_id).empty()) return std::string(trim(virus_id));
  if (!infection_found.empty()) {
    // "Type=0; Resolution=2; Threat=NAME;"
    std::string_view s = infection_found;
    while (!s.empty()) {
      const size_t semi = s.find(';');
      std::string_view part = trim(s.substr(0, semi));
      s.remove_prefix(semi == std::string_view::npos ? s.size() : semi + 1);
      if (ascii::istartsWith(part, "threat=")) {
        part = trim(part.substr(7));
        if (!part.empty()) return std::string(part);
      }
    }
  }
  if (!violations_found.empty()) {
    // "COUNT\n FILENAME\n THREAT\n ID\n DISPOSITION" (RFC 3507 §... as servers send it)
    std::vector<std::string_view> lines;
    std::string_view s = violations_found;
    while (!s.empty()) {
      const size_t nl = s.find('\n');
      lines.push_back(trim(s.substr(0, nl)));
      s.remove_prefix(nl == std::string_view::npos ? s.size() : nl + 1);
    }
    if (lines.size() >= 3 && !lines[2].empty()) return std::string(lines[2]);
  }
  if (!infected()) return {};
  if (!trim(infection_found).empty()) return std::string(trim(infection_found));
  return {};
}

int IcapResponse::httpStatus() const {
  // "HTTP/1.x NNN reason"
  if (!ascii::istartsWith(http_header, "HTTP/")) return 0;
  const size_t sp = http_header.find(' ');
  if (sp == std::string::npos || http_header.size() < sp + 4) return 0;
  uint64_t status = 0;
  if (!parseDecimal(std::string_view(http_header).substr(sp + 1, 3), 999, &status)) return 0;
  return static_cast<int>(status);
}

void IcapResponseParser::reset() noexcept {
  r_ = IcapResponse();
  state_ = State::kStatusLine;
  status_ = IcapStatus::kNeedMore;
  line_.clear();
  header_.clear();
  header_bytes_ = 0;
  http_len_ = 0;
  http_skip_ = 0;
  http_.clear();
  chunk_left_ = 0;
  last_chunk_ = false;
  error_.clear();
}

IcapFeed IcapResponseParser::fail(std::string why, size_t consumed) noexcept {
  state_ = State::kError;
  status_ = IcapStatus::kError;
  error_ = std::move(why);
  return {IcapStatus::kError, consumed, {}};
}

bool IcapResponseParser::takeLine(std::string_view bytes, size_t* used, bool* too_long) noexcept {
  // A line (CRLF included) may hold max_line + 2 octets; the error comes at the same
  // octet however the input is split.
  const size_t room = limits_.max_line + 2 - line_.size();
  const size_t nl = bytes.substr(0, room).find('\n');
  if (nl == std::string_view::npos && bytes.size() >= room) {
    *used = room;
    *too_long = true;
    return false;
  }
  const size_t take = nl == std::string_view::npos ? bytes.size() : nl + 1;
  *used = take;
  line_.append(bytes.data(), take);
  return nl != std::string_view::npos;
}

bool IcapResponseParser::statusLine(std::string_view line) noexcept {
  // "ICAP/1.0 SP code SP reason"
  if (!ascii::istartsWith(line, "ICAP/1.0 ") || line.size() < 12) return false;
  uint64_t code = 0;
  if (!parseDecimal(line.substr(9, 3), 999, &code) || code < 100) return false;
  if (line.size() > 12 && line[12] != ' ') return false;
  r_.code = static_cast<int>(code);
  r_.reason = std::string(line.size() > 13 ? trim(line.substr(13)) : std::string_view());
  return true;
}

void IcapResponseParser::storeHeader() noexcept {
  if (header_.empty()) return;
  std::string_view h = header_;
  const size_t colon = h.find(':');
  const std::string_view name = trim(h.substr(0, colon));
  const std::string_view value = colon == std::string_view::npos ? std::string_view() : trim(h.substr(colon + 1));
  auto is = [&](std::string_view n) { return ascii::iequals(name, n); };
  uint64_t v = 0;
  if (is("ISTag")) {
    r_.istag = std::string(value);
  } else if (is("Options-TTL")) {
    if (parseDecimal(value, uint64_t{1} << 40, &v)) r_.options_ttl = v;
  } else if (is("Preview")) {
    if (parseDecimal(value, uint64_t{1} << 40, &v)) r_.preview = v;
  } else if (is("Max-Connections")) {
    if (parseDecimal(value, uint64_t{1} << 40, &v)) r_.max_connections = v;
  } else if (is("Methods")) {
    std::string_view s = value;
    while (!s.empty()) {
      const size_t sep = s.find_first_of(", \t\n");
      const std::string_view m = s.substr(0, sep);
      if (!m.empty() && r_.methods.size() < 16) r_.methods.push_back(ascii::upper(m));
      s.remove_prefix(sep == std::string_view::npos ? s.size() : sep + 1);
    }
  } else if (is("Allow")) {
    std::string_view s = value;
    while (!s.empty()) {
      const size_t sep = s.find_first_of(", \t\n");
      if (trim(s.substr(0, sep)) == "204") r_.allow204 = true;
      s.remove_prefix(sep == std::string_view::npos ? s.size() : sep + 1);
    }
  } else if (is("X-Infection-Found")) {
    r_.infection_found = value.empty() ? std::string("(unnamed)") : std::string(value);
  } else if (is("X-Virus-ID")) {
    r_.virus_id = value.empty() ? std::string("(unnamed)") : std::string(value);
  } else if (is("X-Violations-Found")) {
    r_.violations_found = value.empty() ? std::string("(unnamed)") : std::string(value);
  } else if (is("Encapsulated")) {
    r_.has_encapsulated = true;
    std::string_view s = value;
    // Stored as-is and checked at the end of the headers.
    http_ = std::string(s);
  }
  header_.clear();
}

bool IcapResponseParser::headerLine(std::string_view line) noexcept {
  if (line.front() == ' ' || line.front() == '\t') {
    if (header_.empty()) return false;  // a continuation of nothing
    header_ += '\n';
    header_.append(trim(line));
    return true;
  }
  storeHeader();
  if (line.find(':') == std::string_view::npos) return false;
  header_.assign(line);
  return true;
}

// Checks Encapsulated (kept in http_) and sets what follows.
bool IcapResponseParser::endOfHeaders() noexcept {
  storeHeader();
  const std::string enc = std::move(http_);
  http_.clear();
  if (!r_.has_encapsulated) return true;  // nothing encapsulated
  std::string_view s = enc;
  uint64_t last_off = 0, last_hdr_off = 0;
  bool first = true, ended = false;
  while (!s.empty()) {
    const size_t comma = s.find(',');
    const std::string_view part = trim(s.substr(0, comma));
    s.remove_prefix(comma == std::string_view::npos ? s.size() : comma + 1);
    if (part.empty()) continue;
    if (ended) return false;  // a body entry must be the last
    const size_t eq = part.find('=');
    if (eq == std::string_view::npos) return false;
    const std::string_view name = trim(part.substr(0, eq));
    uint64_t off = 0;
    if (!parseDecimal(trim(part.substr(eq + 1)), uint64_t{1} << 32, &off)) return false;
    if (first ? off != 0 && !ascii::iequals(name, "null-body") && !ascii::iequals(name, "res-body") &&
                    !ascii::iequals(name, "req-body") && !ascii::iequals(name, "opt-body")
              : off < last_off)
      return false;
    first = false;
    last_off = off;
    if (ascii::iequals(name, "req-hdr")) {
      r_.req_hdr = true;
      last_hdr_off = off;
    } else if (ascii::iequals(name, "res-hdr")) {
      r_.res_hdr = true;
      last_hdr_off = off;
    } else if (ascii::iequals(name, "req-body") || ascii::iequals(name, "res-body") ||
               ascii::iequals(name, "opt-body") || ascii::iequals(name, "null-body")) {
      ended = true;
      http_len_ = off;
      if (ascii::iequals(name, "req-body")) r_.body = IcapResponse::Body::kReq;
      if (ascii::iequals(name, "res-body")) r_.body = IcapResponse::Body::kRes;
      if (ascii::iequals(name, "opt-body")) r_.body = IcapResponse::Body::kOpt;
    } else {
      return false;
    }
  }
  if (!ended) return false;
  if (http_len_ > limits_.max_http_header) return false;
  if (!r_.req_hdr && !r_.res_hdr && http_len_ != 0) return false;
  // last_hdr_off is where the last header section starts inside the http_len_ octets.
  http_skip_ = last_hdr_off;
  return true;
}

bool IcapResponseParser::chunkSizeLine(std::string_view line) noexcept {
  const size_t semi = line.find(';');
  const std::string_view size = trim(line.substr(0, semi));
  if (size.empty() || size.size() > 12) return false;
  uint64_t v = 0;
  for (char c : size) {
    if (!ascii::isHexDigit(c)) return false;
    v = v * 16 + static_cast<uint64_t>(ascii::isDigit(c) ? c - '0' : ascii::toLower(c) - 'a' + 10);
  }
  if (v > kMaxChunk) return false;
  if (semi != std::string_view::npos) {
    std::string_view ext = line.substr(semi + 1);
    while (!ext.empty()) {
      const size_t next = ext.find(';');
      if (ascii::iequals(trim(ext.substr(0, next)), "ieof")) r_.ieof = true;
      ext.remove_prefix(next == std::string_view::npos ? ext.size() : next + 1);
    }
  }
  chunk_left_ = v;
  last_chunk_ = v == 0;
  return true;
}

IcapFeed IcapResponseParser::feed(std::string_view bytes) noexcept {
  if (state_ == State::kDone || state_ == State::kError) return {status_, 0, {}};
  size_t pos = 0;
  while (pos < bytes.size()) {
    const std::string_view in = bytes.substr(pos);
    switch (state_) {
      case State::kStatusLine:
      case State::kHeaders:
      case State::kChunkSize:
      case State::kChunkDataEnd:
      case State::kTrailers: {
        size_t used = 0;
        bool too_long = false;
        const bool complete = takeLine(in, &used, &too_long);
        pos += used;
        if (too_long) return fail("line too long", pos);
        if (!complete) break;
        if (state_ == State::kHeaders || state_ == State::kStatusLine) {
          header_bytes_ += line_.size();
          if (header_bytes_ > limits_.max_headers) return fail("headers too long", pos);
        }
        if (line_.size() < 2 || line_[line_.size() - 2] != '\r') return fail("bare LF", pos);
        line_.resize(line_.size() - 2);
        if (line_.find_first_of(std::string_view("\r\0", 2)) != std::string::npos)
          return fail("CR or NUL inside a line", pos);
        const std::string line = std::move(line_);
        line_.clear();
        switch (state_) {
          case State::kStatusLine:
            if (!statusLine(line)) return fail("bad status line", pos);
            state_ = State::kHeaders;
            break;
          case State::kHeaders:
            if (!line.empty()) {
              if (!headerLine(line)) return fail("bad header line", pos);
              break;
            }
            if (!endOfHeaders()) return fail("bad Encapsulated header", pos);
            if (!r_.has_encapsulated || (http_len_ == 0 && r_.body == IcapResponse::Body::kNone)) {
              state_ = State::kDone;
              status_ = IcapStatus::kDone;
              return {IcapStatus::kDone, pos, {}};
            }
            state_ = http_len_ > 0 ? State::kHttpHeader : State::kChunkSize;
            return {IcapStatus::kHeaders, pos, {}};
          case State::kChunkSize:
            if (!chunkSizeLine(line)) return fail("bad chunk size", pos);
            if (!last_chunk_ && r_.body_size + chunk_left_ > limits_.max_body)
              return fail("encapsulated body too large", pos);
            state_ = last_chunk_ ? State::kTrailers : State::kChunkData;
            break;
          case State::kChunkDataEnd:
            if (!line.empty()) return fail("chunk not followed by CRLF", pos);
            state_ = State::kChunkSize;
            break;
          case State::kTrailers:
            if (!line.empty()) break;  // trailer fields are ignored
            state_ = State::kDone;
            status_ = IcapStatus::kDone;
            return {IcapStatus::kDone, pos, {}};
          case State::kHttpHeader:
          case State::kChunkData:
          case State::kDone:
          case State::kError:
            break;
        }
        break;
      }
      case State::kHttpHeader: {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(in.size(), http_len_ - http_.size()));
        http_.append(in.data(), take);
        pos += take;
        if (http_.size() < http_len_) break;
        r_.http_header = http_.substr(static_cast<size_t>(std::min<uint64_t>(http_skip_, http_.size())));
        http_.clear();
        if (r_.body == IcapResponse::Body::kNone) {
          state_ = State::kDone;
          status_ = IcapStatus::kDone;
          return {IcapStatus::kDone, pos, {}};
        }
        state_ = State::kChunkSize;
        break;
      }
      case State::kChunkData: {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(in.size(), chunk_left_));
        chunk_left_ -= take;
        r_.body_size += take;
        pos += take;
        if (chunk_left_ == 0) state_ = State::kChunkDataEnd;
        return {IcapStatus::kBody, pos, in.substr(0, take)};
      }
      case State::kDone:
      case State::kError:
        return {status_, pos, {}};
    }
  }
  return {IcapStatus::kNeedMore, pos, {}};
}

}  // namespace mailgate::filters
