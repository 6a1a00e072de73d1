#include "gateway/codec/smtp_command.h"

#include <algorithm>
#include <new>

#include "gateway/core/ascii.h"

namespace mailgate::codec {
namespace {

constexpr size_t kMaxSizeDigits = 20;  // RFC 1870 size-value = 1*20DIGIT
constexpr size_t kMaxMechanism = 20;   // RFC 4422 sasl-mech = 1*20mech-char

// RFC 3461 hexchar digits: upper case only, unlike ascii::isHexDigit.
constexpr bool isUpperHex(char c) noexcept { return ascii::isDigit(c) || (c >= 'A' && c <= 'F'); }

SmtpVerb classify(std::string_view v) noexcept {
  for (char c : v) {
    if (!ascii::isAlpha(c)) return SmtpVerb::kUnknown;
  }
  switch (v.size()) {
    case 4:
      switch (ascii::toUpper(v[0])) {
        case 'A':
          if (ascii::iequals(v, "AUTH")) return SmtpVerb::kAuth;
          break;
        case 'B':
          if (ascii::iequals(v, "BDAT")) return SmtpVerb::kBdat;
          break;
        case 'D':
          if (ascii::iequals(v, "DATA")) return SmtpVerb::kData;
          break;
        case 'E':
          if (ascii::iequals(v, "EHLO")) return SmtpVerb::kEhlo;
          break;
        case 'H':
          if (ascii::iequals(v, "HELO")) return SmtpVerb::kHelo;
          if (ascii::iequals(v, "HELP")) return SmtpVerb::kHelp;
          break;
        case 'M':
          if (ascii::iequals(v, "MAIL")) return SmtpVerb::kMail;
          break;
        case 'N':
          if (ascii::iequals(v, "NOOP")) return SmtpVerb::kNoop;
          break;
        case 'Q':
          if (ascii::iequals(v, "QUIT")) return SmtpVerb::kQuit;
          break;
        case 'R':
          if (ascii::iequals(v, "RCPT")) return SmtpVerb::kRcpt;
          if (ascii::iequals(v, "RSET")) return SmtpVerb::kRset;
          break;
        case 'V':
          if (ascii::iequals(v, "VRFY")) return SmtpVerb::kVrfy;
          break;
        default:
          break;
      }
      break;
    case 8:
      if (ascii::iequals(v, "STARTTLS")) return SmtpVerb::kStarttls;
      break;
    default:
      break;
  }
  return SmtpVerb::kUnknown;
}

// 1..20 digits into uint64; false on a non-digit, empty, too many digits or overflow.
enum class Num { kOk, kSyntax, kOverflow };
Num parseNumber(std::string_view s, uint64_t* out) noexcept {
  if (s.empty()) return Num::kSyntax;
  uint64_t v = 0;
  for (char c : s) {
    if (!ascii::isDigit(c)) return Num::kSyntax;
  }
  if (s.size() > kMaxSizeDigits) return Num::kOverflow;
  for (char c : s) {
    const auto d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return Num::kOverflow;
    v = v * 10 + d;
  }
  *out = v;
  return Num::kOk;
}

constexpr bool isBase64Char(char c) noexcept {
  return ascii::isAlpha(c) || ascii::isDigit(c) || c == '+' || c == '/';
}

// RFC 4954 initial-response = base64 / "="
bool isInitialResponse(std::string_view s) noexcept {
  if (s == "=") return true;
  if (s.empty() || s.size() % 4 != 0) return false;
  size_t pad = 0;
  if (s.back() == '=') pad = (s[s.size() - 2] == '=') ? 2 : 1;
  for (size_t i = 0; i < s.size() - pad; ++i) {
    if (!isBase64Char(s[i])) return false;
  }
  return true;
}

// RFC 3461 xtext = *( xchar / hexchar ); the value charset was checked already.
bool isXtext(std::string_view s) noexcept {
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      if (i + 2 >= s.size() || !isUpperHex(s[i + 1]) || !isUpperHex(s[i + 2])) return false;
      i += 2;
    }
  }
  return true;
}

// NOTIFY = "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )
bool isNotify(std::string_view s) noexcept {
  if (ascii::iequals(s, "NEVER")) return true;
  unsigned seen = 0;
  size_t start = 0;
  while (true) {
    size_t end = s.find(',', start);
    if (end == std::string_view::npos) end = s.size();
    const std::string_view item = s.substr(start, end - start);
    unsigned bit = 0;
    if (ascii::iequals(item, "SUCCESS")) {
      bit = 1;
    } else if (ascii::iequals(item, "FAILURE")) {
      bit = 2;
    } else if (ascii::iequals(item, "DELAY")) {
      bit = 4;
    } else {
      return false;
    }
    if ((seen & bit) != 0) return false;
    seen |= bit;
    if (end == s.size()) return true;
    start = end + 1;
  }
}

// ORCPT = addr-type ";" xtext; addr-type = atom (RFC 3461 §4.2)
bool isOrcpt(std::string_view s) noexcept {
  const size_t semi = s.find(';');
  if (semi == 0 || semi == std::string_view::npos || semi + 1 >= s.size()) return false;
  for (size_t i = 0; i < semi; ++i) {
    if (!ascii::isAlpha(s[i]) && !ascii::isDigit(s[i]) && s[i] != '-') return false;
  }
  return isXtext(s.substr(semi + 1));
}

enum ParamBit : unsigned {
  kPSize = 1,
  kPBody = 2,
  kPUtf8 = 4,
  kPAuth = 8,
  kPRet = 16,
  kPEnvid = 32,
  kPNotify = 64,
  kPOrcpt = 128,
};

}  // namespace

SmtpCommandParser::SmtpCommandParser(SmtpLimits limits, SmtpParserOptions options) noexcept
    : limits_(limits), options_(options) {
  cap_ = std::max<size_t>(limits_.max_line, limits_.max_sasl_line);
  buf_.reset(new (std::nothrow) char[cap_ == 0 ? 1 : cap_]);
  if (!buf_) cap_ = 0;
  reset();
}

void SmtpCommandParser::reset() noexcept {
  sasl_mode_ = false;
  beginLine();
}

void SmtpCommandParser::beginLine() noexcept {
  clear_next_ = false;
  cmd_ = SmtpCommand{};
  err_ = SmtpErrorKind::kNone;
  addr_err_ = SmtpAddressError::kNone;
  empty_line_ = false;
  reported_ = false;
  len_ = 0;
  line_octets_ = 0;
  auth_line_ = false;
  sasl_line_active_ = sasl_mode_;
  sasl_line_ = {};
  state_ = State::kLine;
}

void SmtpCommandParser::expectSaslLine() noexcept {
  if (state_ == State::kFatal) return;
  sasl_mode_ = true;
  if (!hasPending()) clear_next_ = true;
}

bool SmtpCommandParser::hasPending() const noexcept {
  return !clear_next_ && line_octets_ > 0 && state_ != State::kFatal && !reported_;
}

bool SmtpCommandParser::ownsView(std::string_view v) const noexcept {
  if (v.empty()) return true;
  const char* b = buf_.get();
  return b != nullptr && v.data() >= b && v.data() + v.size() <= b + len_;
}

size_t SmtpCommandParser::limit() const noexcept {
  return (sasl_line_active_ || auth_line_) ? limits_.max_sasl_line : limits_.max_line;
}

void SmtpCommandParser::framing(SmtpErrorKind k) noexcept {
  if (err_ == SmtpErrorKind::kNone) err_ = k;
  state_ = State::kDiscard;
}

SmtpStatus SmtpCommandParser::endLine(SmtpStatus s) noexcept {
  clear_next_ = true;
  if (sasl_line_active_) sasl_mode_ = false;  // one response line per expectSaslLine()
  if (state_ != State::kFatal) state_ = State::kLine;
  return s;
}

SmtpFeed SmtpCommandParser::feed(std::string_view input) noexcept {
  if (state_ == State::kFatal) return {SmtpStatus::kFatal, 0};
  if (clear_next_) beginLine();
  size_t i = 0;
  while (i < input.size()) {
    const char c = input[i++];
    ++line_octets_;
    const size_t lim = limit();
    if (line_octets_ > lim && state_ != State::kDiscard) {
      // Reported at once, not at an LF that may never come; the rest of the line is
      // then discarded silently, however long: discarding needs no memory, and the
      // client that sent it gets exactly one reply per line, so that its next
      // command is answered in step.
      err_ = SmtpErrorKind::kLineTooLong;
      state_ = State::kDiscard;
      if (c != '\n') {
        reported_ = true;
        return {SmtpStatus::kError, i};
      }
    }
    switch (state_) {
      case State::kLine:
        if (c == '\r') {
          state_ = State::kCr;
        } else if (c == '\n') {
          framing(SmtpErrorKind::kBareLf);
          return {endLine(SmtpStatus::kError), i};
        } else if (c == '\0') {
          framing(SmtpErrorKind::kNul);
        } else if (len_ < cap_) {
          buf_[len_++] = c;
          if (len_ == 5 && !sasl_line_active_ && ascii::istartsWith({buf_.get(), 5}, "AUTH "))
            auth_line_ = true;
        }
        break;
      case State::kCr:
        if (c == '\n') return {lineDone(), i};
        framing(SmtpErrorKind::kBareCr);  // the previous CR; the line is now discarded
        break;
      case State::kDiscard:
        if (c == '\n') {
          if (reported_) {  // the error went out when the limit was crossed
            if (sasl_line_active_) sasl_mode_ = false;
            beginLine();
            break;
          }
          return {endLine(SmtpStatus::kError), i};
        }
        break;
      case State::kFatal:
        return {SmtpStatus::kFatal, i};
    }
  }
  return {SmtpStatus::kNeedMore, i};
}

SmtpStatus SmtpCommandParser::lineDone() noexcept {
  const std::string_view line(buf_.get(), len_);
  if (sasl_line_active_) {
    sasl_line_ = line;
    return endLine(SmtpStatus::kSaslLine);
  }
  const SmtpStatus s = parseLine(line);
  if (s == SmtpStatus::kFatal) state_ = State::kFatal;
  return endLine(s);
}

SmtpStatus SmtpCommandParser::parseLine(std::string_view line) noexcept {
  if (line.empty()) {
    empty_line_ = true;
    err_ = SmtpErrorKind::kSyntax;
    return SmtpStatus::kError;
  }
  const size_t sp = line.find(' ');
  const bool has_rest = sp != std::string_view::npos;
  cmd_.verb_text = line.substr(0, has_rest ? sp : line.size());
  const std::string_view rest = has_rest ? line.substr(sp + 1) : std::string_view{};
  cmd_.verb = classify(cmd_.verb_text);
  SmtpErrorKind e = SmtpErrorKind::kNone;
  switch (cmd_.verb) {
    case SmtpVerb::kUnknown:
      cmd_.arg = rest;
      break;
    case SmtpVerb::kEhlo:
    case SmtpVerb::kHelo:
      if (rest.empty()) {
        e = SmtpErrorKind::kSyntax;
      } else if (options_.strict_helo) {
        if (checkSmtpDomain(rest, false) != SmtpAddressError::kNone) e = SmtpErrorKind::kSyntax;
      } else {
        for (char c : rest) {
          if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) e = SmtpErrorKind::kSyntax;
        }
      }
      cmd_.arg = rest;
      break;
    case SmtpVerb::kData:
    case SmtpVerb::kRset:
    case SmtpVerb::kQuit:
    case SmtpVerb::kStarttls:
      if (has_rest) e = SmtpErrorKind::kSyntax;
      break;
    case SmtpVerb::kNoop:
    case SmtpVerb::kHelp:
      cmd_.arg = rest;
      break;
    case SmtpVerb::kVrfy:
      if (rest.empty()) e = SmtpErrorKind::kSyntax;
      cmd_.arg = rest;
      break;
    case SmtpVerb::kMail:
      if (!ascii::istartsWith(rest, "FROM:")) {
        e = SmtpErrorKind::kSyntax;
      } else {
        e = parseMailRcpt(rest.substr(5), true);
      }
      break;
    case SmtpVerb::kRcpt:
      if (!ascii::istartsWith(rest, "TO:")) {
        e = SmtpErrorKind::kSyntax;
      } else {
        e = parseMailRcpt(rest.substr(3), false);
      }
      break;
    case SmtpVerb::kBdat:
      e = parseBdat(rest);
      break;
    case SmtpVerb::kAuth:
      e = parseAuth(rest);
      break;
  }
  if (e == SmtpErrorKind::kNone) return SmtpStatus::kCommand;
  err_ = e;
  return e == SmtpErrorKind::kBdatSyntax ? SmtpStatus::kFatal : SmtpStatus::kError;
}

SmtpErrorKind SmtpCommandParser::parseMailRcpt(std::string_view s, bool mail) noexcept {
  if (!s.empty() && s.front() == ' ') {
    if (!options_.allow_space_after_colon) return SmtpErrorKind::kSyntax;
    while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  }
  // The path ends at the first '>' outside a quoted string.
  size_t end = std::string_view::npos;
  if (!s.empty() && s.front() == '<') {
    bool quoted = false;
    for (size_t i = 1; i < s.size(); ++i) {
      const char c = s[i];
      if (quoted && c == '\\') {
        ++i;
      } else if (c == '"') {
        quoted = !quoted;
      } else if (c == '>' && !quoted) {
        end = i;
        break;
      }
    }
  }
  if (end == std::string_view::npos) {
    addr_err_ = SmtpAddressError::kSyntax;
    return SmtpErrorKind::kBadAddress;
  }
  cmd_.path = s.substr(0, end + 1);
  std::string_view after = s.substr(end + 1);
  SmtpErrorKind perr = SmtpErrorKind::kNone;
  if (!after.empty()) {
    if (after.front() != ' ') {
      addr_err_ = SmtpAddressError::kSyntax;
      return SmtpErrorKind::kBadAddress;
    }
    after.remove_prefix(1);
    perr = after.empty() ? SmtpErrorKind::kSyntax : parseParams(after, mail);
  }
  SmtpAddressOptions ao;
  ao.allow_null = mail;
  ao.allow_postmaster = !mail;
  ao.smtputf8 = mail ? cmd_.smtputf8 : utf8_rcpt_;
  addr_err_ = parseSmtpPath(cmd_.path, ao, &cmd_.address);
  switch (addr_err_) {
    case SmtpAddressError::kNone:
      return perr;
    case SmtpAddressError::kSourceRoute:
      return SmtpErrorKind::kSourceRoute;
    case SmtpAddressError::kSyntax:
    case SmtpAddressError::kNullNotAllowed:
    case SmtpAddressError::kLocalTooLong:
    case SmtpAddressError::kDomainTooLong:
    case SmtpAddressError::kPathTooLong:
    case SmtpAddressError::kEightBit:
      return SmtpErrorKind::kBadAddress;
  }
  return SmtpErrorKind::kBadAddress;
}

SmtpErrorKind SmtpCommandParser::parseParams(std::string_view s, bool mail) noexcept {
  unsigned seen = 0;
  bool eight_bit = false;
  if (static_cast<size_t>(std::count(s.begin(), s.end(), ' ')) >= kSmtpMaxParams) return SmtpErrorKind::kBadParam;
  size_t start = 0;
  while (true) {
    size_t end = s.find(' ', start);
    const bool last = end == std::string_view::npos;
    if (last) end = s.size();
    const std::string_view tok = s.substr(start, end - start);
    if (tok.empty()) return SmtpErrorKind::kSyntax;  // double or trailing space
    if (cmd_.param_count >= kSmtpMaxParams) return SmtpErrorKind::kBadParam;
    const size_t eq = tok.find('=');
    SmtpParam& p = cmd_.params[cmd_.param_count++];
    p.keyword = tok.substr(0, eq);
    p.has_value = eq != std::string_view::npos;
    if (p.has_value) p.value = tok.substr(eq + 1);
    // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    if (p.keyword.empty() || p.keyword.front() == '-') return SmtpErrorKind::kBadParam;
    for (char c : p.keyword) {
      if (!ascii::isAlpha(c) && !ascii::isDigit(c) && c != '-') return SmtpErrorKind::kBadParam;
    }
    // esmtp-value = 1*(%d33-60 / %d62-126) (RFC 6531 adds UTF8-non-ascii)
    if (p.has_value && p.value.empty()) return SmtpErrorKind::kBadParam;
    for (char ch : p.value) {
      const auto c = static_cast<unsigned char>(ch);
      if (c >= 0x80) {
        eight_bit = true;
      } else if (c < 33 || c > 126 || c == '=') {
        return SmtpErrorKind::kBadParam;
      }
    }
    const std::string_view k = p.keyword;
    const std::string_view v = p.value;
    unsigned bit = 0;
    bool ok = true;
    if (mail && ascii::iequals(k, "SIZE")) {
      bit = kPSize;
      if (!p.has_value) return SmtpErrorKind::kBadParam;
      switch (parseNumber(v, &cmd_.size)) {
        case Num::kOk:
          cmd_.has_size = true;
          break;
        case Num::kSyntax:
          return SmtpErrorKind::kBadParam;
        case Num::kOverflow:
          return SmtpErrorKind::kSizeOverflow;
      }
    } else if (mail && ascii::iequals(k, "BODY")) {
      bit = kPBody;
      if (ascii::iequals(v, "7BIT")) {
        cmd_.body = SmtpBody::k7Bit;
      } else if (ascii::iequals(v, "8BITMIME")) {
        cmd_.body = SmtpBody::k8BitMime;
      } else if (ascii::iequals(v, "BINARYMIME")) {
        cmd_.body = SmtpBody::kBinaryMime;
      } else {
        ok = false;
      }
    } else if (mail && ascii::iequals(k, "SMTPUTF8")) {
      bit = kPUtf8;
      ok = !p.has_value;
      cmd_.smtputf8 = true;
    } else if (mail && ascii::iequals(k, "AUTH")) {
      bit = kPAuth;
      ok = p.has_value && (v == "<>" || isXtext(v));
      cmd_.has_auth = true;
      cmd_.auth = v;
    } else if (mail && ascii::iequals(k, "RET")) {
      bit = kPRet;
      ok = ascii::iequals(v, "FULL") || ascii::iequals(v, "HDRS");
      cmd_.ret = v;
    } else if (mail && ascii::iequals(k, "ENVID")) {
      bit = kPEnvid;
      ok = p.has_value && isXtext(v);
      cmd_.envid = v;
    } else if (!mail && ascii::iequals(k, "NOTIFY")) {
      bit = kPNotify;
      ok = p.has_value && isNotify(v);
      cmd_.notify = v;
    } else if (!mail && ascii::iequals(k, "ORCPT")) {
      bit = kPOrcpt;
      ok = p.has_value && isOrcpt(v);
      cmd_.orcpt = v;
    } else {
      return SmtpErrorKind::kUnknownParam;
    }
    if (!ok || (seen & bit) != 0) return SmtpErrorKind::kBadParam;
    seen |= bit;
    if (last) break;
    start = end + 1;
  }
  if (eight_bit && !(mail ? cmd_.smtputf8 : utf8_rcpt_)) return SmtpErrorKind::kBadParam;
  return SmtpErrorKind::kNone;
}

SmtpErrorKind SmtpCommandParser::parseBdat(std::string_view rest) noexcept {
  const size_t sp = rest.find(' ');
  const std::string_view num = rest.substr(0, sp);
  if (parseNumber(num, &cmd_.bdat_size) != Num::kOk) return SmtpErrorKind::kBdatSyntax;
  if (sp != std::string_view::npos) {
    if (!ascii::iequals(rest.substr(sp + 1), "LAST")) return SmtpErrorKind::kBdatSyntax;
    cmd_.bdat_last = true;
  }
  return SmtpErrorKind::kNone;
}

SmtpErrorKind SmtpCommandParser::parseAuth(std::string_view rest) noexcept {
  const size_t sp = rest.find(' ');
  const std::string_view mech = rest.substr(0, sp);
  if (mech.empty() || mech.size() > kMaxMechanism) return SmtpErrorKind::kSyntax;
  for (char c : mech) {
    if (!ascii::isAlpha(c) && !ascii::isDigit(c) && c != '-' && c != '_') return SmtpErrorKind::kSyntax;
  }
  cmd_.arg = mech;
  if (sp != std::string_view::npos) {
    const std::string_view ir = rest.substr(sp + 1);
    if (!isInitialResponse(ir)) return SmtpErrorKind::kSyntax;
    cmd_.has_initial_response = true;
    cmd_.initial_response = ir;
  }
  return SmtpErrorKind::kNone;
}

bool SmtpCommandParser::isFramingError() const noexcept {
  switch (err_) {
    case SmtpErrorKind::kBareLf:
    case SmtpErrorKind::kBareCr:
    case SmtpErrorKind::kNul:
      return true;
    case SmtpErrorKind::kNone:
    case SmtpErrorKind::kLineTooLong:
    case SmtpErrorKind::kSyntax:
    case SmtpErrorKind::kBadAddress:
    case SmtpErrorKind::kSourceRoute:
    case SmtpErrorKind::kBadParam:
    case SmtpErrorKind::kUnknownParam:
    case SmtpErrorKind::kSizeOverflow:
    case SmtpErrorKind::kBdatSyntax:
      return false;
  }
  return false;
}

uint16_t SmtpCommandParser::errorCode() const noexcept {
  switch (err_) {
    case SmtpErrorKind::kNone:
      return 0;
    case SmtpErrorKind::kBareLf:
    case SmtpErrorKind::kBareCr:
    case SmtpErrorKind::kNul:
    case SmtpErrorKind::kLineTooLong:
      return 500;
    case SmtpErrorKind::kSyntax:
      return empty_line_ ? 500 : 501;
    case SmtpErrorKind::kBadAddress:
      return addr_err_ == SmtpAddressError::kEightBit ? 553 : 501;
    case SmtpErrorKind::kSourceRoute:
    case SmtpErrorKind::kBadParam:
    case SmtpErrorKind::kBdatSyntax:
      return 501;
    case SmtpErrorKind::kUnknownParam:
      return 555;
    case SmtpErrorKind::kSizeOverflow:
      return 552;
  }
  return 500;
}

std::string_view SmtpCommandParser::errorEnhanced() const noexcept {
  switch (err_) {
    case SmtpErrorKind::kNone:
      return "";
    case SmtpErrorKind::kBareLf:
    case SmtpErrorKind::kBareCr:
    case SmtpErrorKind::kNul:
      return "5.5.2";
    case SmtpErrorKind::kLineTooLong:
      return (sasl_line_active_ || auth_line_) ? "5.5.6" : "5.5.2";
    case SmtpErrorKind::kSyntax:
      return empty_line_ ? "5.5.2" : "5.5.4";
    case SmtpErrorKind::kBadAddress:
    case SmtpErrorKind::kSourceRoute:
      if (addr_err_ == SmtpAddressError::kEightBit) return "5.6.7";
      return cmd_.verb == SmtpVerb::kMail ? "5.1.7" : "5.1.3";
    case SmtpErrorKind::kBadParam:
    case SmtpErrorKind::kUnknownParam:
    case SmtpErrorKind::kBdatSyntax:
      return "5.5.4";
    case SmtpErrorKind::kSizeOverflow:
      return "5.3.4";
  }
  return "5.5.2";
}

std::string_view SmtpCommandParser::errorText() const noexcept {
  switch (err_) {
    case SmtpErrorKind::kNone:
      return "";
    case SmtpErrorKind::kBareLf:
      return "Bare LF in command line";
    case SmtpErrorKind::kBareCr:
      return "Bare CR in command line";
    case SmtpErrorKind::kNul:
      return "NUL in command line";
    case SmtpErrorKind::kLineTooLong:
      return "Line too long";
    case SmtpErrorKind::kSyntax:
      return empty_line_ ? "Empty command" : "Syntax error in parameters or arguments";
    case SmtpErrorKind::kBadAddress:
    case SmtpErrorKind::kSourceRoute:
      return smtpAddressErrorText(addr_err_);
    case SmtpErrorKind::kBadParam:
      return "Invalid parameter";
    case SmtpErrorKind::kUnknownParam:
      return "Parameter not recognized";
    case SmtpErrorKind::kSizeOverflow:
      return "Message size exceeds fixed maximum message size";
    case SmtpErrorKind::kBdatSyntax:
      return "Invalid BDAT chunk size";
  }
  return "";
}

}  // namespace mailgate::codec
