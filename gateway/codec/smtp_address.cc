#include "gateway/codec/smtp_address.h"

#include <cstdint>

#include "gateway/core/ascii.h"
#include "gateway/core/utf8.h"

namespace mailgate::codec {
namespace {

constexpr size_t kMaxLabel = 63;

constexpr bool isHigh(char c) noexcept { return static_cast<unsigned char>(c) >= 0x80; }

// RFC 5322 atext.
constexpr bool isAtext(char c) noexcept {
  if (ascii::isAlpha(c) || ascii::isDigit(c)) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '/':
    case '=':
    case '?':
    case '^':
    case '_':
    case '`':
    case '{':
    case '|':
    case '}':
    case '~':
      return true;
    default:
      return false;
  }
}

// RFC 5321 qtextSMTP: %d32-33 / %d35-91 / %d93-126.
constexpr bool isQtext(char ch) noexcept {
  const auto c = static_cast<unsigned char>(ch);
  return (c >= 32 && c <= 126) && c != '"' && c != '\\';
}

// Consumes one 8-bit character at s[*i]; reports kEightBit or kSyntax.
SmtpAddressError eat8bit(std::string_view s, size_t* i, bool smtputf8) noexcept {
  if (!smtputf8) return SmtpAddressError::kEightBit;
  const size_t n = utf8::sequenceLength(s, *i);
  if (n == 0) return SmtpAddressError::kSyntax;
  *i += n;
  return SmtpAddressError::kNone;
}

// snum "." snum "." snum "." snum, each 0..255 in 1-3 digits.
bool isIpv4(std::string_view s) noexcept {
  int parts = 0;
  size_t i = 0;
  while (true) {
    size_t digits = 0;
    unsigned v = 0;
    while (i < s.size() && ascii::isDigit(s[i]) && digits < 4) {
      v = v * 10 + static_cast<unsigned>(s[i] - '0');
      ++digits;
      ++i;
    }
    if (digits == 0 || digits > 3 || v > 255) return false;
    ++parts;
    if (parts == 4) return i == s.size();
    if (i >= s.size() || s[i] != '.') return false;
    ++i;
  }
}

// Groups separated by ':' (possibly none). The last may be an IPv4 address.
bool ipv6Groups(std::string_view s, bool allow_v4, int* hex, bool* v4) noexcept {
  *hex = 0;
  *v4 = false;
  if (s.empty()) return true;
  size_t start = 0;
  while (true) {
    size_t end = s.find(':', start);
    const bool last = end == std::string_view::npos;
    if (last) end = s.size();
    const std::string_view g = s.substr(start, end - start);
    if (last && allow_v4 && g.find('.') != std::string_view::npos) {
      if (!isIpv4(g)) return false;
      *v4 = true;
      return true;
    }
    if (g.empty() || g.size() > 4) return false;
    for (char c : g) {
      if (!ascii::isHexDigit(c)) return false;
    }
    ++*hex;
    if (*hex > 8) return false;
    if (last) return true;
    start = end + 1;
  }
}

// RFC 5321 §4.1.3 IPv6-addr.
bool isIpv6(std::string_view s) noexcept {
  const size_t dc = s.find("::");
  int hex = 0, hex2 = 0;
  bool v4 = false, v4b = false;
  if (dc == std::string_view::npos) {
    if (!ipv6Groups(s, true, &hex, &v4)) return false;
    return v4 ? hex == 6 : hex == 8;
  }
  if (!ipv6Groups(s.substr(0, dc), false, &hex, &v4)) return false;
  if (!ipv6Groups(s.substr(dc + 2), true, &hex2, &v4b)) return false;
  return v4b ? hex + hex2 <= 4 : hex + hex2 <= 6;
}

SmtpAddressError checkLiteral(std::string_view s) noexcept {
  // s includes the brackets.
  if (s.size() < 3 || s.front() != '[' || s.back() != ']') return SmtpAddressError::kSyntax;
  const std::string_view in = s.substr(1, s.size() - 2);
  if (isIpv4(in)) return SmtpAddressError::kNone;
  if (in.size() > 5 && ascii::iequals(in.substr(0, 5), "ipv6:") && isIpv6(in.substr(5))) {
    return SmtpAddressError::kNone;
  }
  return SmtpAddressError::kSyntax;  // general address literals are refused too
}

// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str] (or a U-label).
SmtpAddressError checkDomainName(std::string_view s, bool smtputf8, bool* eight_bit) noexcept {
  if (s.empty()) return SmtpAddressError::kSyntax;
  if (s.size() > SmtpAddress::kMaxDomain) return SmtpAddressError::kDomainTooLong;
  size_t i = 0;
  while (true) {
    const size_t label_start = i;
    bool last_hyphen = false;
    while (i < s.size() && s[i] != '.') {
      const char c = s[i];
      if (isHigh(c)) {
        const SmtpAddressError e = eat8bit(s, &i, smtputf8);
        if (e != SmtpAddressError::kNone) return e;
        *eight_bit = true;
        last_hyphen = false;
        continue;
      }
      if (c == '-') {
        if (i == label_start) return SmtpAddressError::kSyntax;
        last_hyphen = true;
      } else if (ascii::isAlpha(c) || ascii::isDigit(c)) {
        last_hyphen = false;
      } else {
        return SmtpAddressError::kSyntax;
      }
      ++i;
    }
    if (i == label_start || last_hyphen) return SmtpAddressError::kSyntax;
    if (i - label_start > kMaxLabel) return SmtpAddressError::kDomainTooLong;
    if (i == s.size()) return SmtpAddressError::kNone;
    ++i;  // '.'
    if (i == s.size()) return SmtpAddressError::kSyntax;  // trailing dot
  }
}

// Returns the end of the local part starting at s[0] (index of the '@'), or an error.
SmtpAddressError scanLocal(std::string_view s, bool smtputf8, SmtpAddress* a, size_t* end) noexcept {
  size_t i = 0;
  if (!s.empty() && s[0] == '"') {
    a->quoted_local = true;
    i = 1;
    while (true) {
      if (i >= s.size()) return SmtpAddressError::kSyntax;
      const char c = s[i];
      if (c == '"') {
        ++i;
        break;
      }
      if (c == '\\') {
        if (i + 1 >= s.size()) return SmtpAddressError::kSyntax;
        const auto q = static_cast<unsigned char>(s[i + 1]);
        if (q < 32 || q > 126) return SmtpAddressError::kSyntax;  // quoted-pairSMTP
        if (q == '%') a->percent_hack = true;
        if (q == '!') a->bang_path = true;
        i += 2;
        continue;
      }
      if (isHigh(c)) {
        const SmtpAddressError e = eat8bit(s, &i, smtputf8);
        if (e != SmtpAddressError::kNone) return e;
        a->eight_bit = true;
        continue;
      }
      if (!isQtext(c)) return SmtpAddressError::kSyntax;
      if (c == '%') a->percent_hack = true;
      if (c == '!') a->bang_path = true;
      ++i;
    }
  } else {
    bool atom_empty = true;
    while (i < s.size() && s[i] != '@') {
      const char c = s[i];
      if (c == '.') {
        if (atom_empty) return SmtpAddressError::kSyntax;  // leading or double dot
        atom_empty = true;
        ++i;
        continue;
      }
      if (isHigh(c)) {
        const SmtpAddressError e = eat8bit(s, &i, smtputf8);
        if (e != SmtpAddressError::kNone) return e;
        a->eight_bit = true;
        atom_empty = false;
        continue;
      }
      if (!isAtext(c)) return SmtpAddressError::kSyntax;
      if (c == '%') a->percent_hack = true;
      if (c == '!') a->bang_path = true;
      atom_empty = false;
      ++i;
    }
    if (atom_empty) return SmtpAddressError::kSyntax;  // empty or trailing dot
  }
  *end = i;
  return SmtpAddressError::kNone;
}

SmtpAddressError parseMailboxInto(std::string_view s, const SmtpAddressOptions& o, SmtpAddress* a) noexcept {
  size_t at = 0;
  SmtpAddressError e = scanLocal(s, o.smtputf8, a, &at);
  if (e != SmtpAddressError::kNone) return e;
  if (at >= s.size() || s[at] != '@') return SmtpAddressError::kSyntax;
  a->local_part = s.substr(0, at);
  a->domain = s.substr(at + 1);
  if (a->local_part.size() > SmtpAddress::kMaxLocal) return SmtpAddressError::kLocalTooLong;
  if (!a->domain.empty() && a->domain.front() == '[') {
    if (a->domain.size() > SmtpAddress::kMaxDomain) return SmtpAddressError::kDomainTooLong;
    e = checkLiteral(a->domain);
    a->address_literal = true;
  } else {
    e = checkDomainName(a->domain, o.smtputf8, &a->eight_bit);
  }
  if (e != SmtpAddressError::kNone) return e;
  for (size_t k = 0; k < a->domain.size(); ++k) a->lower_[k] = ascii::toLower(a->domain[k]);
  a->lower_len_ = a->domain.size();
  return SmtpAddressError::kNone;
}

SmtpAddressError finish(SmtpAddressError e, SmtpAddress* out) noexcept {
  if (e != SmtpAddressError::kNone) *out = SmtpAddress{};
  return e;
}

}  // namespace

SmtpAddressError parseSmtpMailbox(std::string_view mailbox, const SmtpAddressOptions& options,
                                  SmtpAddress* out) noexcept {
  *out = SmtpAddress{};
  return finish(parseMailboxInto(mailbox, options, out), out);
}

SmtpAddressError parseSmtpPath(std::string_view path, const SmtpAddressOptions& options,
                               SmtpAddress* out) noexcept {
  *out = SmtpAddress{};
  if (path.size() < 2 || path.front() != '<' || path.back() != '>') return SmtpAddressError::kSyntax;
  const std::string_view in = path.substr(1, path.size() - 2);
  if (in.empty()) {
    if (!options.allow_null) return SmtpAddressError::kNullNotAllowed;
    out->is_null = true;
    return SmtpAddressError::kNone;
  }
  if (in.front() == '@') {
    // A-d-l ":" Mailbox. Refused whatever follows, as long as it looks like a route.
    return in.find(':') != std::string_view::npos ? SmtpAddressError::kSourceRoute : SmtpAddressError::kSyntax;
  }
  if (options.allow_postmaster && ascii::iequals(in, "postmaster")) {
    out->is_postmaster = true;
    out->local_part = in;
    return SmtpAddressError::kNone;
  }
  SmtpAddressError e = parseMailboxInto(in, options, out);
  if (e == SmtpAddressError::kNone && path.size() > SmtpAddress::kMaxPath) e = SmtpAddressError::kPathTooLong;
  return finish(e, out);
}

SmtpAddressError checkSmtpDomain(std::string_view domain, bool smtputf8) noexcept {
  if (!domain.empty() && domain.front() == '[') {
    if (domain.size() > SmtpAddress::kMaxDomain) return SmtpAddressError::kDomainTooLong;
    return checkLiteral(domain);
  }
  bool eight = false;
  return checkDomainName(domain, smtputf8, &eight);
}

size_t unquoteLocalPart(std::string_view lp, char* out, size_t cap) noexcept {
  size_t n = 0;
  if (lp.size() < 2 || lp.front() != '"' || lp.back() != '"') {
    if (lp.size() > cap) return SIZE_MAX;
    for (char c : lp) out[n++] = c;
    return n;
  }
  for (size_t i = 1; i + 1 < lp.size(); ++i) {
    char c = lp[i];
    if (c == '\\' && i + 2 < lp.size()) c = lp[++i];
    if (n >= cap) return SIZE_MAX;
    out[n++] = c;
  }
  return n;
}

std::string_view smtpAddressErrorText(SmtpAddressError e) noexcept {
  switch (e) {
    case SmtpAddressError::kNone:
      return "";
    case SmtpAddressError::kSyntax:
      return "Bad address syntax";
    case SmtpAddressError::kNullNotAllowed:
      return "Null address not allowed here";
    case SmtpAddressError::kSourceRoute:
      return "Source routes are not accepted";
    case SmtpAddressError::kLocalTooLong:
      return "Local part too long";
    case SmtpAddressError::kDomainTooLong:
      return "Domain name too long";
    case SmtpAddressError::kPathTooLong:
      return "Path too long";
    case SmtpAddressError::kEightBit:
      return "8-bit address requires SMTPUTF8";
  }
  return "Bad address syntax";
}

}  // namespace mailgate::codec
