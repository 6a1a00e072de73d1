#include "gateway/admin/bans_api.h"

#include <algorithm>
#include <ctime>

#include "conf/config.h"

namespace mailgate::admin {

namespace {
int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool printable(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return false;
  return true;
}

bool netParam(const HttpRequest& req, filters::policy::NetAddr* out, std::string* error) {
  const std::string* net = req.param("net");
  if (!net || net->empty()) {
    *error = "net is required (an address or a network, e.g. 192.0.2.1 or 192.0.2.0/24)";
    return false;
  }
  std::string why;
  if (!filters::policy::parseCidr(*net, out, &why)) {
    *error = "net: not an address or a network" + (why.empty() ? std::string() : ": " + why);
    return false;
  }
  return true;
}
}  // namespace

const std::string* HttpRequest::param(std::string_view name) const {
  for (const auto& [k, v] : query)
    if (k == name) return &v;
  return nullptr;
}

bool percentDecode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = hexValue(in[i + 1]), lo = hexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (c == '\0') return false;
    out->push_back(c);
  }
  return true;
}

std::string percentEncode(std::string_view in) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    const bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                            c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  return out;
}

bool parseRequestLine(std::string_view line, HttpRequest* out) {
  *out = HttpRequest{};
  const size_t sp = line.find(' ');
  if (sp == std::string_view::npos || sp == 0) return false;
  out->method.assign(line.substr(0, sp));
  std::string_view rest = line.substr(sp + 1);
  const size_t sp2 = rest.find(' ');
  std::string_view target = sp2 == std::string_view::npos ? rest : rest.substr(0, sp2);
  if (target.empty() || target[0] != '/') return false;
  const size_t q = target.find('?');
  if (!percentDecode(target.substr(0, q), &out->path)) return false;
  if (q == std::string_view::npos) return true;
  std::string_view qs = target.substr(q + 1);
  while (!qs.empty()) {
    const size_t amp = qs.find('&');
    std::string_view pair = qs.substr(0, amp);
    qs = amp == std::string_view::npos ? std::string_view() : qs.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    std::string k, v;
    if (!percentDecode(pair.substr(0, eq), &k)) return false;
    if (eq != std::string_view::npos && !percentDecode(pair.substr(eq + 1), &v)) return false;
    out->query.emplace_back(std::move(k), std::move(v));
  }
  return true;
}

std::string isoTime(int64_t unix_ms) {
  const time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string jsonEscape(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out;
}

std::string banJson(const filters::policy::Ban& b) {
  return "{\"net\":\"" + jsonEscape(b.net.text()) + "\",\"created\":\"" + isoTime(b.created_ms) +
         "\",\"expires\":\"" + isoTime(b.expires_ms) + "\",\"expires_ms\":" + std::to_string(b.expires_ms) +
         ",\"level\":" + std::to_string(b.level) + ",\"reason\":\"" + jsonEscape(b.reason) +
         "\",\"origin\":\"" + jsonEscape(b.origin) + "\"}";
}

std::string bansJson(const std::vector<filters::policy::Ban>& bans) {
  std::string out = "[";
  for (size_t i = 0; i < bans.size(); ++i) {
    if (i) out += ",\n ";
    out += banJson(bans[i]);
  }
  return out + "]\n";
}

std::string padRight(std::string s, size_t w) {
  if (s.size() < w) s.append(w - s.size(), ' ');
  return s;
}

std::string printableText(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}

bool listLimit(const HttpRequest& req, size_t dflt, size_t max, size_t* out, std::string* error) {
  *out = dflt;
  const std::string* l = req.param("limit");
  if (!l) return true;
  size_t v = 0;
  bool ok = !l->empty() && l->size() <= 6;
  for (char c : *l) {
    if (c < '0' || c > '9') ok = false;
    if (ok) v = v * 10 + static_cast<size_t>(c - '0');
  }
  if (!ok || v < 1 || v > max) {
    *error = "limit: a number from 1 to " + std::to_string(max);
    return false;
  }
  *out = v;
  return true;
}

std::string bansTable(const std::vector<filters::policy::Ban>& bans) {
  const auto pad = padRight;
  size_t wn = 3, wo = 6;
  for (const auto& b : bans) {
    wn = std::max(wn, b.net.text().size());
    wo = std::max(wo, b.origin.size());
  }
  std::string out =
      pad("NET", wn) + "  " + pad("EXPIRES", 20) + "  LEVEL  " + pad("ORIGIN", wo) + "  REASON\n";
  for (const auto& b : bans) {
    std::string reason = b.reason;
    for (char& c : reason)
      if (static_cast<unsigned char>(c) < 0x20) c = '?';
    out += pad(b.net.text(), wn) + "  " + pad(isoTime(b.expires_ms), 20) + "  " +
           pad(std::to_string(b.level), 5) + "  " + pad(b.origin, wo) + "  " + reason + "\n";
  }
  return out;
}

bool parseBanRequest(const HttpRequest& req, BanRequest* out, std::string* error) {
  if (!netParam(req, &out->net, error)) return false;
  if (const std::string* ttl = req.param("ttl")) {
    conf::Duration d{};
    if (!conf::parseDuration(*ttl, &d) || d.count() < 1000 || d > kMaxBanTtl) {
      *error = "ttl: a duration from 1s to 366d (e.g. 90s, 30m, 1h, 7d)";
      return false;
    }
    out->ttl = std::chrono::duration_cast<std::chrono::milliseconds>(d);
  }
  if (const std::string* reason = req.param("reason")) {
    if (reason->size() > kMaxReason || !printable(*reason)) {
      *error = "reason: at most 200 bytes, no control characters";
      return false;
    }
    if (!reason->empty()) out->reason = *reason;
  }
  return true;
}

bool parseLiftRequest(const HttpRequest& req, filters::policy::NetAddr* out, std::string* error) {
  return netParam(req, out, error);
}

}  // namespace mailgate::admin
