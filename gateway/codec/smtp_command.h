#pragma once
// SMTP client-command parser (RFC 5321, 1870, 2920, 3030, 3207, 4954, 6152, 6531, 3461).
// PURE: no I/O, no clock, no logging; one buffer allocated at construction.
//
// feed() accepts any split of the input and stops after each complete command
// (kCommand), SASL response line (kSaslLine) or error, so `consumed` tells exactly
// where a BDAT chunk or DATA content starts. The caller acts, then feeds the rest.
//
// Behaviour choices:
// - Lines end with CRLF only. A bare LF ends the line with kError kBareLf; a CR not
//   followed by LF (kBareCr) and NUL (kNul) give kError when the line's LF arrives.
//   These three are "framing" errors (isFramingError()): possible smuggling, log them.
//   A framing error wins over a syntax error of the same line; the first one wins.
// - max_line counts the whole line with its CRLF (RFC 5321 §4.5.3.1.4: 512). AUTH
//   lines and SASL response lines use max_sasl_line (RFC 4954 §4: 12288). An
//   over-long line is reported at once (kError kLineTooLong: 500 5.5.2, or 500 5.5.6
//   for AUTH/SASL lines as in RFC 4954 §6) and the rest of it, however long, is
//   discarded silently up to its LF: one reply per line, so that the client's next
//   command is answered in step. The answered line is not pending.
// - Verbs are case-insensitive. An unknown or malformed verb (also an empty one: a
//   line starting with SP) is kCommand with SmtpVerb::kUnknown (the session answers
//   500 5.5.1 and counts it); an empty line is kError kSyntax (500 5.5.2).
// - MAIL FROM:<path> / RCPT TO:<path>: "FROM:"/"TO:" case-insensitive, no space
//   before or after the colon unless options.allow_space_after_colon (off by default:
//   "MAIL FROM: <a@b>" is kError kSyntax). Parameters are separated by single spaces;
//   a trailing space is a syntax error.
// - ESMTP parameters: MAIL: SIZE=n (digits; more than 20 of them or a value over
//   UINT64_MAX → kSizeOverflow, 552 5.3.4), BODY=7BIT|8BITMIME|BINARYMIME, SMTPUTF8, AUTH=xtext|<>, RET=FULL|HDRS,
//   ENVID=xtext. RCPT: NOTIFY=NEVER|SUCCESS,FAILURE,DELAY, ORCPT=type;xtext.
//   Keywords are case-insensitive; all parameters are also kept as sent in params[].
//   A duplicate, a missing or malformed value → kBadParam (501 5.5.4); an unknown
//   keyword, or a known one on the wrong verb → kUnknownParam (555 5.5.4); more than
//   kSmtpMaxParams parameters → kBadParam (checked first).
// - The address is checked by parseSmtpPath(): MAIL allows "<>", RCPT allows
//   "<Postmaster>". 8-bit addresses need SMTPUTF8: on MAIL the parameter of the same
//   command, on RCPT setSmtpUtf8(true) (set by the session once it accepted a MAIL
//   with SMTPUTF8; clear it at the end of the transaction). Address errors are
//   kBadAddress (501 5.1.7 MAIL / 5.1.3 RCPT) or kSourceRoute; addressError() has
//   the detail. Percent hack / bang path are flags on command().address, not errors.
// - EHLO/HELO take exactly one Domain or address-literal (checked when
//   options.strict_helo, the default; otherwise any printable token).
//   DATA, RSET, QUIT, STARTTLS take no argument. NOOP, HELP, VRFY keep the rest of the
//   line in arg (VRFY requires it). 8-bit octets are allowed only in that free text
//   and in SMTPUTF8 addresses/values.
// - BDAT n [LAST]: n is 1-20 digits, overflow-checked into uint64. A BDAT line that
//   cannot be parsed is kFatal (kBdatSyntax): the chunk length is unknown, so the
//   stream cannot be resynchronised (RFC 3030 leaves closing as the only safe choice).
// - AUTH mechanism [initial-response]: mechanism 1-20 of A-Z a-z 0-9 - _, the
//   response base64 or "=" (RFC 4954).
// - SASL mode (expectSaslLine()) is one-shot: the next line, verbatim, is kSaslLine.
// - STARTTLS: feed() stops right after the STARTTLS line; bytes after `consumed` are
//   the caller's and must be discarded (their presence is the injection attack,
//   RFC 3207 §6 / CVE-2011-0411). reset() drops the parser's own buffered bytes;
//   hasPending() tells beforehand whether an incomplete line was buffered.
// - After kFatal, feed() returns {kFatal, 0} until reset().
// - Views in command() and saslLine() are valid until the next feed() or reset().
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "gateway/codec/smtp_address.h"

namespace mailgate::codec {

enum class SmtpVerb {
  kUnknown,
  kEhlo,
  kHelo,
  kMail,
  kRcpt,
  kData,
  kBdat,
  kRset,
  kNoop,
  kQuit,
  kVrfy,
  kHelp,
  kStarttls,
  kAuth,
};

enum class SmtpStatus {
  kNeedMore,  // all input consumed, no complete line yet
  kCommand,   // command() is valid until the next feed()/reset()
  kSaslLine,  // (SASL mode only) saslLine() holds the client's response line
  kError,     // recoverable: reply errorCode() errorEnhanced() errorText(); parser in sync
  kFatal,     // reply (errorCode/Text) and close
};

enum class SmtpErrorKind {
  kNone,
  kBareLf,        // framing: LF without CR (500 5.5.2)
  kBareCr,        // framing: CR not followed by LF (500 5.5.2)
  kNul,           // framing: NUL octet (500 5.5.2)
  kLineTooLong,   // 500 5.5.2 (5.5.6 for AUTH and SASL lines)
  kSyntax,        // 501 5.5.4 (500 5.5.2 for an empty line)
  kBadAddress,    // 501 5.1.7 (MAIL) / 5.1.3 (RCPT); 553 5.6.7 for 8-bit without SMTPUTF8
  kSourceRoute,   // 501 5.1.7 / 5.1.3 "source routes are not accepted"
  kBadParam,      // 501 5.5.4
  kUnknownParam,  // 555 5.5.4
  kSizeOverflow,  // 552 5.3.4 (SIZE= beyond uint64)
  kBdatSyntax,    // fatal: 501 5.5.4 then close
};

enum class SmtpBody { kUnspecified, k7Bit, k8BitMime, kBinaryMime };

struct SmtpLimits {
  uint32_t max_line = 512;        // command line incl. CRLF (RFC 5321 §4.5.3.1.4)
  uint32_t max_sasl_line = 12288; // AUTH line and SASL response line incl. CRLF (RFC 4954)
};

struct SmtpParserOptions {
  bool allow_space_after_colon = false;  // accept "MAIL FROM: <a@b>" (not RFC 5321)
  bool strict_helo = true;               // EHLO/HELO argument must be a Domain / address-literal
};

struct SmtpParam {
  std::string_view keyword;  // as sent
  std::string_view value;    // as sent; empty when has_value is false
  bool has_value = false;
};

inline constexpr uint32_t kSmtpMaxParams = 10;

struct SmtpCommand {
  SmtpVerb verb = SmtpVerb::kUnknown;
  std::string_view verb_text;  // as sent
  // EHLO/HELO: the domain; VRFY/HELP/NOOP: the rest of the line (may be empty);
  // AUTH: the mechanism; kUnknown: the rest of the line after the verb.
  std::string_view arg;
  // MAIL/RCPT
  std::string_view path;  // "<...>" as sent
  SmtpAddress address;    // parsed path
  SmtpParam params[kSmtpMaxParams];
  uint32_t param_count = 0;
  bool has_size = false;
  uint64_t size = 0;  // SIZE=
  SmtpBody body = SmtpBody::kUnspecified;
  bool smtputf8 = false;
  bool has_auth = false;
  std::string_view auth;    // AUTH= value (xtext or "<>")
  std::string_view ret;     // RET= value (FULL|HDRS)
  std::string_view envid;   // ENVID= value
  std::string_view notify;  // NOTIFY= value
  std::string_view orcpt;   // ORCPT= value
  // AUTH
  bool has_initial_response = false;
  std::string_view initial_response;  // base64 or "="
  // BDAT
  uint64_t bdat_size = 0;
  bool bdat_last = false;
};

struct SmtpFeed {
  SmtpStatus status;
  size_t consumed;
};

class SmtpCommandParser {
 public:
  explicit SmtpCommandParser(SmtpLimits limits = {}, SmtpParserOptions options = {}) noexcept;
  SmtpFeed feed(std::string_view input) noexcept;
  const SmtpCommand& command() const noexcept { return cmd_; }

  SmtpErrorKind errorKind() const noexcept { return err_; }
  bool isFramingError() const noexcept;          // bare LF, bare CR or NUL
  uint16_t errorCode() const noexcept;           // suggested reply code (500, 501, 552, 555)
  std::string_view errorEnhanced() const noexcept;  // "5.5.2" ...
  std::string_view errorText() const noexcept;   // human text (no code)
  SmtpAddressError addressError() const noexcept { return addr_err_; }
  // The verb of the line in error, when it was recognised (kUnknown otherwise).
  SmtpVerb errorVerb() const noexcept { return cmd_.verb; }

  // After an AUTH challenge ("334 ..."): the next line is a SASL response.
  void expectSaslLine() noexcept;
  std::string_view saslLine() const noexcept { return sasl_line_; }
  // RFC 6531: allow 8-bit addresses in RCPT (the accepted MAIL had SMTPUTF8).
  void setSmtpUtf8(bool on) noexcept { utf8_rcpt_ = on; }

  // Drop every buffered byte and start over (after STARTTLS, or after kFatal).
  void reset() noexcept;
  // True when bytes of an incomplete line are buffered.
  bool hasPending() const noexcept;
  // True when `v` lies inside the parser's own buffer (tests and fuzz targets).
  bool ownsView(std::string_view v) const noexcept;

 private:
  enum class State : uint8_t { kLine, kCr, kDiscard, kFatal };

  void beginLine() noexcept;
  SmtpStatus endLine(SmtpStatus s) noexcept;
  void framing(SmtpErrorKind k) noexcept;
  SmtpStatus lineDone() noexcept;
  SmtpStatus parseLine(std::string_view line) noexcept;
  SmtpErrorKind parseMailRcpt(std::string_view rest, bool mail) noexcept;
  SmtpErrorKind parseParams(std::string_view s, bool mail) noexcept;
  SmtpErrorKind parseBdat(std::string_view rest) noexcept;
  SmtpErrorKind parseAuth(std::string_view rest) noexcept;
  size_t limit() const noexcept;

  SmtpLimits limits_;
  SmtpParserOptions options_;
  SmtpCommand cmd_;
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t len_ = 0;
  size_t line_octets_ = 0;  // CRLF included
  State state_ = State::kLine;
  SmtpErrorKind err_ = SmtpErrorKind::kNone;
  SmtpAddressError addr_err_ = SmtpAddressError::kNone;
  bool empty_line_ = false;
  bool reported_ = false;     // the over-long line was already answered
  bool clear_next_ = false;   // the last feed() ended a line
  bool sasl_mode_ = false;
  bool sasl_line_active_ = false;
  bool auth_line_ = false;    // the line's verb is AUTH: max_sasl_line applies
  bool utf8_rcpt_ = false;
  std::string_view sasl_line_;
};

}  // namespace mailgate::codec
