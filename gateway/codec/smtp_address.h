#pragma once
// RFC 5321 Path / Mailbox syntax (§4.1.2, §4.5.3.1), with RFC 6531 (SMTPUTF8).
// PURE: no I/O, no clock, no logging, no allocation.
//
// Behaviour choices:
// - parseSmtpPath() takes "<...>" exactly (no surrounding spaces). "<>" is the null
//   path, accepted only when options.allow_null (MAIL FROM). "<Postmaster>" (any case,
//   no domain, RFC 5321 §4.1.1.3) only when options.allow_postmaster (RCPT TO).
// - Source routes ("<@a,@b:user@d>") are REJECTED with kSourceRoute (RFC 5321 says
//   SHOULD accept and ignore; an edge MX refuses them, like the percent hack).
// - Limits: local part <= 64 octets, domain <= 255, each label <= 63, the whole path
//   with its angle brackets <= 256 (§4.5.3.1.3). Lengths are octets as sent (a quoted
//   local part counts its quotes and backslashes).
// - Local part: dot-string (atext atoms separated by single dots) or quoted-string
//   (qtextSMTP / quoted-pairSMTP). The view keeps the form as sent (quotes included);
//   unquoteLocalPart() gives the canonical content.
// - Domain: LDH labels (letter/digit at both ends of a label, hyphens inside; a
//   trailing dot is refused), or an address literal [IPv4] / [IPv6:...] checked
//   strictly (RFC 5321 §4.1.3: at most 6 groups around "::"). General address
//   literals ("[tag:...]") are refused as kSyntax.
// - 8-bit octets are allowed only with options.smtputf8, only where RFC 6531 allows
//   them (atext, qtext, U-labels) and only as well-formed UTF-8; otherwise kEightBit
//   (without SMTPUTF8) or kSyntax (malformed UTF-8).
// - Flags, not errors: '%' in the local part (percent hack), '!' in the local part
//   (bang path). The MX refuses relaying through them; submission may allow them.
// - domainLower() is the domain folded to ASCII lower case (8-bit octets unchanged),
//   kept in the struct itself so it needs no allocation; it survives copies.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mailgate::codec {

enum class SmtpAddressError {
  kNone,
  kSyntax,         // not a Path / Mailbox
  kNullNotAllowed, // "<>" where a mailbox is required
  kSourceRoute,    // "<@relay:user@domain>": refused
  kLocalTooLong,   // local part > 64 octets
  kDomainTooLong,  // domain > 255 octets or a label > 63
  kPathTooLong,    // path > 256 octets including "<" and ">"
  kEightBit,       // 8-bit octet without SMTPUTF8
};

struct SmtpAddressOptions {
  bool allow_null = false;        // "<>" accepted (MAIL FROM)
  bool allow_postmaster = false;  // "<Postmaster>" without domain accepted (RCPT TO)
  bool smtputf8 = false;          // RFC 6531: UTF-8 allowed in local part and domain
};

struct SmtpAddress {
  static constexpr size_t kMaxLocal = 64;
  static constexpr size_t kMaxDomain = 255;
  static constexpr size_t kMaxPath = 256;

  bool is_null = false;        // "<>"
  bool is_postmaster = false;  // "<Postmaster>" without domain
  std::string_view local_part;  // as sent; quoted form keeps its quotes
  std::string_view domain;      // as sent; an address literal keeps its brackets
  bool quoted_local = false;
  bool address_literal = false;
  bool percent_hack = false;  // '%' in the local part ("user%other@relay")
  bool bang_path = false;     // '!' in the local part ("host!user@relay")
  bool eight_bit = false;     // some octet >= 0x80 (only possible with SMTPUTF8)

  // The domain folded to ASCII lower case; empty for the null path and Postmaster.
  std::string_view domainLower() const noexcept { return {lower_.data(), lower_len_}; }

  std::array<char, kMaxDomain> lower_{};
  size_t lower_len_ = 0;
};

// `path` is "<" [A-d-l ":"] Mailbox ">" or "<>". On error *out is left cleared.
SmtpAddressError parseSmtpPath(std::string_view path, const SmtpAddressOptions& options,
                               SmtpAddress* out) noexcept;
// `mailbox` is Local-part "@" ( Domain / address-literal ), without angle brackets.
SmtpAddressError parseSmtpMailbox(std::string_view mailbox, const SmtpAddressOptions& options,
                                  SmtpAddress* out) noexcept;
// Domain / address-literal alone (EHLO/HELO argument). Returns kNone or an error.
SmtpAddressError checkSmtpDomain(std::string_view domain, bool smtputf8) noexcept;
// Content of a local part: quotes and quoted-pair backslashes removed; a dot-string is
// copied as is. Returns the length written, or SIZE_MAX when `cap` is too small.
size_t unquoteLocalPart(std::string_view local_part, char* out, size_t cap) noexcept;
// Short human text for an error (for a 501/553 reply).
std::string_view smtpAddressErrorText(SmtpAddressError e) noexcept;

}  // namespace mailgate::codec
