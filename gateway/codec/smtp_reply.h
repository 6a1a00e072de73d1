#pragma once
// Parser for an SMTP/LMTP server's replies (RFC 5321 §4.2, RFC 2034/3463 enhanced
// status codes, RFC 2033 LMTP), for the delivery client. PURE: no I/O, no clock, no
// logging; one buffer allocated at construction.
//
// feed() accepts any split and stops after each complete reply (kReply), so
// pipelined replies (RFC 2920) and LMTP's per-recipient replies after DATA (one
// reply per accepted RCPT, in order) come out one by one: call feed() again with the
// unconsumed rest for the next one.
//
// Behaviour choices:
// - Reply-line = code ( "-" text / " " text / nothing ) CRLF; code: first digit 2-5,
//   second 0-5, third 0-9. Every line of a multi-line reply carries the same code.
// - CRLF only: a bare LF, a CR not followed by LF or a NUL is kError. A server that
//   breaks the grammar is not one we can stay in sync with, so every error is final:
//   the delivery client drops the connection (a "protocol" backend failure). After
//   kError feed() returns {kError, 0} until reset().
// - max_line bounds one line incl. CRLF (checked as octets arrive), max_lines the
//   lines of one reply (at most kSmtpMaxReplyLines).
// - The enhanced status code (class.subject.detail, 1-3 digits each) is taken from
//   the first line's text when it is followed by SP or ends the text and its class
//   equals the reply code's first digit (RFC 2034); otherwise it is absent.
// - Views in reply() are valid until the next feed() or reset().
// parseEhloReply() reads the EHLO keywords of a 250 reply (lines after the first),
// keywords case-insensitive, "AUTH=" (old form) accepted like "AUTH".
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace mailgate::codec {

inline constexpr uint32_t kSmtpMaxReplyLines = 64;

struct SmtpReplyLimits {
  uint32_t max_line = 1000;  // one reply line incl. CRLF (RFC 5321 says 512; servers exceed it)
  uint32_t max_lines = 64;   // lines per reply (<= kSmtpMaxReplyLines)
};

struct SmtpEnhancedCode {
  uint8_t cls = 0;  // 2, 4 or 5; 0 when absent
  uint16_t subject = 0;
  uint16_t detail = 0;
  bool present() const noexcept { return cls != 0; }
};

struct SmtpReply {
  uint16_t code = 0;
  SmtpEnhancedCode enhanced;
  std::string_view enhanced_text;  // "5.1.1" as sent on the first line, or empty
  std::string_view lines[kSmtpMaxReplyLines];  // text after "ddd-" / "ddd " (may be empty)
  uint32_t line_count = 0;

  bool positive() const noexcept { return code >= 200 && code < 300; }
  bool intermediate() const noexcept { return code >= 300 && code < 400; }
  bool transient() const noexcept { return code >= 400 && code < 500; }
  bool permanent() const noexcept { return code >= 500; }
  // The first line's text without its enhanced code and the SP after it.
  std::string_view message() const noexcept;
};

enum class SmtpReplyStatus {
  kNeedMore,  // all input consumed, no complete reply yet
  kReply,     // reply() is complete
  kError,     // malformed reply: close the connection (errorText() says why)
};

struct SmtpReplyFeed {
  SmtpReplyStatus status;
  size_t consumed;
};

class SmtpReplyParser {
 public:
  explicit SmtpReplyParser(SmtpReplyLimits limits = {}) noexcept;
  SmtpReplyFeed feed(std::string_view input) noexcept;
  const SmtpReply& reply() const noexcept { return reply_; }
  std::string_view errorText() const noexcept { return err_; }
  void reset() noexcept;
  bool hasPending() const noexcept { return !clear_next_ && (line_octets_ > 0 || reply_.line_count > 0); }
  bool ownsView(std::string_view v) const noexcept;

 private:
  enum class State : uint8_t { kLine, kCr, kError };
  void beginReply() noexcept;
  SmtpReplyStatus fail(std::string_view why) noexcept;
  SmtpReplyStatus lineDone() noexcept;

  SmtpReplyLimits limits_;
  SmtpReply reply_;
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t len_ = 0;
  size_t line_start_ = 0;
  size_t line_octets_ = 0;
  State state_ = State::kLine;
  bool clear_next_ = false;
  std::string_view err_;
};

enum SmtpAuthMech : uint32_t {
  kSmtpAuthPlain = 1u << 0,
  kSmtpAuthLogin = 1u << 1,
  kSmtpAuthCramMd5 = 1u << 2,
  kSmtpAuthXoauth2 = 1u << 3,
  kSmtpAuthOauthBearer = 1u << 4,
  kSmtpAuthScramSha1 = 1u << 5,
  kSmtpAuthScramSha256 = 1u << 6,
  kSmtpAuthExternal = 1u << 7,
  kSmtpAuthOther = 1u << 31,
};

enum SmtpXclientAttr : uint32_t {
  kXclientAddr = 1u << 0,
  kXclientPort = 1u << 1,
  kXclientHelo = 1u << 2,
  kXclientProto = 1u << 3,
  kXclientLogin = 1u << 4,
  kXclientName = 1u << 5,
  kXclientDestAddr = 1u << 6,
  kXclientDestPort = 1u << 7,
  kXclientOther = 1u << 31,
};

struct SmtpEhlo {
  std::string_view domain;  // first word of the first line
  bool pipelining = false;
  bool eightbitmime = false;
  bool smtputf8 = false;
  bool chunking = false;
  bool binarymime = false;
  bool starttls = false;
  bool enhancedstatuscodes = false;
  bool dsn = false;
  bool size = false;        // SIZE announced
  uint64_t size_limit = 0;  // SIZE n; 0 when no (valid) number was given
  bool auth = false;
  uint32_t auth_mechs = 0;    // SmtpAuthMech bits
  std::string_view auth_raw;  // the AUTH line's parameters as sent
  bool xclient = false;
  uint32_t xclient_attrs = 0;    // SmtpXclientAttr bits
  std::string_view xclient_raw;  // the XCLIENT line's parameters as sent
};

// False when the reply is not a 250; views point into the reply's buffer.
bool parseEhloReply(const SmtpReply& reply, SmtpEhlo* out) noexcept;

}  // namespace mailgate::codec
