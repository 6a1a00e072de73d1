#include "gateway/codec/smtp_reply.h"

#include <algorithm>
#include <new>

#include "gateway/core/ascii.h"

namespace mailgate::codec {
namespace {

constexpr std::string_view kErrBareLf = "Bare LF in reply";
constexpr std::string_view kErrBareCr = "Bare CR in reply";
constexpr std::string_view kErrNul = "NUL in reply";
constexpr std::string_view kErrLong = "Reply line too long";
constexpr std::string_view kErrLines = "Too many reply lines";
constexpr std::string_view kErrCode = "Invalid reply code";
constexpr std::string_view kErrMixed = "Inconsistent reply code in multi-line reply";
constexpr std::string_view kErrDead = "Reply stream is in error";

// 1-3 digits at s[*i]; false otherwise.
bool digits13(std::string_view s, size_t* i, uint16_t* v) noexcept {
  size_t n = 0;
  *v = 0;
  while (*i < s.size() && ascii::isDigit(s[*i]) && n < 4) {
    *v = static_cast<uint16_t>(*v * 10 + (s[*i] - '0'));
    ++*i;
    ++n;
  }
  return n >= 1 && n <= 3;
}

// Length of the enhanced code at the start of `text`, or 0.
size_t enhancedCode(std::string_view text, uint16_t code, SmtpEnhancedCode* out) noexcept {
  if (text.size() < 5) return 0;
  const char cls = text[0];
  if ((cls != '2' && cls != '4' && cls != '5') || cls - '0' != code / 100 || text[1] != '.') return 0;
  size_t i = 2;
  uint16_t subject = 0, detail = 0;
  if (!digits13(text, &i, &subject) || i >= text.size() || text[i] != '.') return 0;
  ++i;
  if (!digits13(text, &i, &detail)) return 0;
  if (i < text.size() && text[i] != ' ') return 0;
  out->cls = static_cast<uint8_t>(cls - '0');
  out->subject = subject;
  out->detail = detail;
  return i;
}

uint32_t authBit(std::string_view m) noexcept {
  if (ascii::iequals(m, "PLAIN")) return kSmtpAuthPlain;
  if (ascii::iequals(m, "LOGIN")) return kSmtpAuthLogin;
  if (ascii::iequals(m, "CRAM-MD5")) return kSmtpAuthCramMd5;
  if (ascii::iequals(m, "XOAUTH2")) return kSmtpAuthXoauth2;
  if (ascii::iequals(m, "OAUTHBEARER")) return kSmtpAuthOauthBearer;
  if (ascii::iequals(m, "SCRAM-SHA-1")) return kSmtpAuthScramSha1;
  if (ascii::iequals(m, "SCRAM-SHA-256")) return kSmtpAuthScramSha256;
  if (ascii::iequals(m, "EXTERNAL")) return kSmtpAuthExternal;
  return kSmtpAuthOther;
}

uint32_t xclientBit(std::string_view a) noexcept {
  if (ascii::iequals(a, "ADDR")) return kXclientAddr;
  if (ascii::iequals(a, "PORT")) return kXclientPort;
  if (ascii::iequals(a, "HELO")) return kXclientHelo;
  if (ascii::iequals(a, "PROTO")) return kXclientProto;
  if (ascii::iequals(a, "LOGIN")) return kXclientLogin;
  if (ascii::iequals(a, "NAME")) return kXclientName;
  if (ascii::iequals(a, "DESTADDR")) return kXclientDestAddr;
  if (ascii::iequals(a, "DESTPORT")) return kXclientDestPort;
  return kXclientOther;
}

template <typename F>
void forEachWord(std::string_view s, F&& f) {
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(' ', start);
    if (end == std::string_view::npos) end = s.size();
    if (end > start) f(s.substr(start, end - start));
    start = end + 1;
  }
}

}  // namespace

std::string_view SmtpReply::message() const noexcept {
  if (line_count == 0) return {};
  std::string_view t = lines[0];
  if (!enhanced_text.empty()) {
    t.remove_prefix(enhanced_text.size());
    if (!t.empty() && t.front() == ' ') t.remove_prefix(1);
  }
  return t;
}

SmtpReplyParser::SmtpReplyParser(SmtpReplyLimits limits) noexcept : limits_(limits) {
  limits_.max_lines = std::clamp<uint32_t>(limits_.max_lines, 1, kSmtpMaxReplyLines);
  cap_ = size_t{limits_.max_line} * limits_.max_lines;
  buf_.reset(new (std::nothrow) char[cap_ == 0 ? 1 : cap_]);
  if (!buf_) cap_ = 0;
  reset();
}

void SmtpReplyParser::reset() noexcept {
  state_ = State::kLine;
  err_ = {};
  beginReply();
}

void SmtpReplyParser::beginReply() noexcept {
  clear_next_ = false;
  reply_.code = 0;
  reply_.enhanced = {};
  reply_.enhanced_text = {};
  reply_.line_count = 0;
  len_ = 0;
  line_start_ = 0;
  line_octets_ = 0;
}

bool SmtpReplyParser::ownsView(std::string_view v) const noexcept {
  if (v.empty()) return true;
  const char* b = buf_.get();
  return b != nullptr && v.data() >= b && v.data() + v.size() <= b + len_;
}

SmtpReplyStatus SmtpReplyParser::fail(std::string_view why) noexcept {
  if (err_.empty()) err_ = why;
  state_ = State::kError;
  return SmtpReplyStatus::kError;
}

SmtpReplyFeed SmtpReplyParser::feed(std::string_view input) noexcept {
  if (state_ == State::kError) {
    if (err_.empty()) err_ = kErrDead;
    return {SmtpReplyStatus::kError, 0};
  }
  if (clear_next_) beginReply();
  size_t i = 0;
  while (i < input.size()) {
    const char c = input[i++];
    if (++line_octets_ > limits_.max_line) return {fail(kErrLong), i};
    if (state_ == State::kCr) {
      if (c != '\n') return {fail(kErrBareCr), i};
      const SmtpReplyStatus s = lineDone();
      if (s != SmtpReplyStatus::kNeedMore) return {s, i};
      continue;
    }
    if (c == '\r') {
      state_ = State::kCr;
    } else if (c == '\n') {
      return {fail(kErrBareLf), i};
    } else if (c == '\0') {
      return {fail(kErrNul), i};
    } else if (len_ < cap_) {
      buf_[len_++] = c;
    } else {
      return {fail(kErrLong), i};  // not reached: max_line * max_lines
    }
  }
  return {SmtpReplyStatus::kNeedMore, i};
}

SmtpReplyStatus SmtpReplyParser::lineDone() noexcept {
  state_ = State::kLine;
  const std::string_view line(buf_.get() + line_start_, len_ - line_start_);
  line_octets_ = 0;
  if (line.size() < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
      !ascii::isDigit(line[2])) {
    return fail(kErrCode);
  }
  bool last = true;
  if (line.size() > 3) {
    if (line[3] == '-') {
      last = false;
    } else if (line[3] != ' ') {
      return fail(kErrCode);
    }
  }
  const auto code = static_cast<uint16_t>((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
  if (reply_.line_count == 0) {
    reply_.code = code;
  } else if (code != reply_.code) {
    return fail(kErrMixed);
  }
  if (reply_.line_count >= limits_.max_lines) return fail(kErrLines);
  const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
  if (reply_.line_count == 0) {
    const size_t n = enhancedCode(text, code, &reply_.enhanced);
    if (n > 0) reply_.enhanced_text = text.substr(0, n);
  }
  reply_.lines[reply_.line_count++] = text;
  line_start_ = len_;
  if (!last) return SmtpReplyStatus::kNeedMore;
  clear_next_ = true;
  return SmtpReplyStatus::kReply;
}

bool parseEhloReply(const SmtpReply& reply, SmtpEhlo* out) noexcept {
  *out = SmtpEhlo{};
  if (reply.code != 250 || reply.line_count == 0) return false;
  const std::string_view first = reply.lines[0];
  out->domain = first.substr(0, first.find(' '));
  for (uint32_t l = 1; l < reply.line_count; ++l) {
    const std::string_view line = reply.lines[l];
    size_t kend = line.find_first_of(" =");
    if (kend == std::string_view::npos) kend = line.size();
    const std::string_view kw = line.substr(0, kend);
    const std::string_view params = kend < line.size() ? line.substr(kend + 1) : std::string_view{};
    if (ascii::iequals(kw, "PIPELINING")) {
      out->pipelining = true;
    } else if (ascii::iequals(kw, "8BITMIME")) {
      out->eightbitmime = true;
    } else if (ascii::iequals(kw, "SMTPUTF8")) {
      out->smtputf8 = true;
    } else if (ascii::iequals(kw, "CHUNKING")) {
      out->chunking = true;
    } else if (ascii::iequals(kw, "BINARYMIME")) {
      out->binarymime = true;
    } else if (ascii::iequals(kw, "STARTTLS")) {
      out->starttls = true;
    } else if (ascii::iequals(kw, "ENHANCEDSTATUSCODES")) {
      out->enhancedstatuscodes = true;
    } else if (ascii::iequals(kw, "DSN")) {
      out->dsn = true;
    } else if (ascii::iequals(kw, "SIZE")) {
      out->size = true;
      uint64_t v = 0;
      bool ok = !params.empty() && params.size() <= 20;
      for (char c : params) {
        if (!ok) break;
        if (!ascii::isDigit(c)) {
          ok = false;
        } else {
          const auto d = static_cast<uint64_t>(c - '0');
          if (v > (UINT64_MAX - d) / 10) {
            ok = false;
          } else {
            v = v * 10 + d;
          }
        }
      }
      out->size_limit = ok ? v : 0;
    } else if (ascii::iequals(kw, "AUTH")) {
      out->auth = true;
      if (out->auth_raw.empty()) out->auth_raw = params;
      forEachWord(params, [&](std::string_view m) { out->auth_mechs |= authBit(m); });
    } else if (ascii::iequals(kw, "XCLIENT")) {
      out->xclient = true;
      out->xclient_raw = params;
      forEachWord(params, [&](std::string_view a) { out->xclient_attrs |= xclientBit(a); });
    }
  }
  return true;
}

}  // namespace mailgate::codec
