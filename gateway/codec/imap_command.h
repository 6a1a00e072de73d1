#pragma once
// IMAP client-command parser for the pre-authentication phase (RFC 9051 / 3501,
// RFC 7888 LITERAL+, RFC 4959 SASL-IR). PURE: no I/O, no clock, no logging.
//
// feed() accepts any split of the input. It stops after each complete command
// (status kCommand), when a synchronising literal needs the server's "+ "
// continuation (kContinuation), and after each error. The caller acts, then
// calls feed() again with the unconsumed rest.
//
// Behaviour (see also docs in imap_command.cc):
// - Errors are reported once per line, when its LF arrives (the parser is then in
//   sync); the first error of a line wins; the line limit is the exception.
// - Line limit: octets outside literal data, CRLFs included. Over max_line: reported
//   at once (kError "[TOOBIG] ..."), the rest discarded silently up to LF. Over
//   4 * max_line without LF: kFatal at once.
// - Literals are accepted only where an astring may stand (LOGIN, ID). A LOGIN
//   literal <= max_literal; an ID field <= 30 octets and an ID value <= 1024 octets
//   (RFC 2971, whatever max_literal is; quoted ones are checked at the end of the
//   line, as is the limit of 30 pairs). All literals of one command <=
//   max(2 * max_literal, 30 * (30 + 1024)).
//   {n} too big or not allowed: kError right after its "{n}" CRLF (no "+" is sent,
//   so no data follows). {n+} not allowed or too big: the n octets are skipped
//   (n <= max(max_literal, 1024 for ID)), then kError at the end of the line.
//   {n+} with a larger n: kFatal (RFC 7888 permits closing).
// - Bare LF ends the line with kError; CR not followed by LF and NUL (outside
//   literal data) are kError at the next LF. NUL inside literal data: kError.
// - SASL mode is one-shot: the next line (bounded by max_line) is returned verbatim
//   as kSaslLine, or kError; call expectSaslLine() again for the next response.
// - After kFatal, feed() returns {kFatal, 0} until reset().
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace mailgate::codec {

enum class ImapVerb {
  kUnknown,
  kCapability,
  kNoop,
  kLogout,
  kStarttls,
  kLogin,
  kAuthenticate,
  kId,
  kOther,  // a syntactically fine command that is not valid before authentication
};

struct ImapLimits {
  uint32_t max_line = 65536;     // octets of one command line, excluding literal data (Dovecot: 64K)
  uint32_t max_literal = 65536;  // octets of one literal
  uint32_t max_args = 64;        // arguments per command (ID's list counts its items)
};

enum class ImapStatus {
  kNeedMore,      // all input consumed, no complete command yet
  kCommand,       // command() is valid until the next feed()/reset()
  kContinuation,  // a synchronising literal {n} was announced and accepted: send "+ OK\r\n", then feed on
  kSaslLine,      // (only in SASL mode) saslLine() holds one client response line
  kError,         // recoverable: reply "<tag> BAD <errorText()>" (tag may be "*"), parser resynchronised
  kFatal,         // unrecoverable (oversize literal+/line without end, framing): reply "* BYE", close
};

struct ImapArg {
  std::string_view value;      // the decoded string (quotes/escapes removed, literal contents)
  bool is_nil = false;         // NIL atom
  bool is_list_open = false;   // "(" in ID's parameter list
  bool is_list_close = false;  // ")"
};

struct ImapCommand {
  std::string_view tag;
  std::string_view verb_text;  // as sent
  ImapVerb verb = ImapVerb::kUnknown;
  ImapArg args[64];
  uint32_t argc = 0;
};

struct ImapFeed {
  ImapStatus status;
  size_t consumed;
};

class ImapCommandParser {
 public:
  explicit ImapCommandParser(ImapLimits limits) noexcept;
  ImapFeed feed(std::string_view input) noexcept;
  const ImapCommand& command() const noexcept { return cmd_; }
  std::string_view errorTag() const noexcept;   // "*" when the tag was not parsed
  std::string_view errorText() const noexcept;  // human text for the BAD reply
  // After AUTHENTICATE: the next line is a SASL response (base64 or "*"), not a command.
  void expectSaslLine() noexcept;
  std::string_view saslLine() const noexcept;
  // Drop every buffered byte and start over (after STARTTLS).
  void reset() noexcept;
  // True when bytes of an incomplete command are buffered.
  bool hasPending() const noexcept;
  // True when `v` lies inside the parser's own buffer (tests and fuzz targets).
  bool ownsView(std::string_view v) const noexcept;

 private:
  enum class State : uint8_t {
    kTag,           // reading the tag
    kVerb,          // reading the command name
    kArgStart,      // expecting an argument (after SP or "(")
    kAtom,          // inside an atom / astring
    kQuoted,        // inside a quoted string
    kQuotedEscape,  // after "\" in a quoted string
    kLitLen,        // after "{": digits
    kLitPlus,       // after "+": expecting "}"
    kLitCr,         // after "}": expecting CR
    kLitLf,         // after "}" CR: expecting LF
    kLitData,       // literal octets
    kAfterArg,      // after an argument: SP, ")" or CR
    kLf,            // after the final CR: expecting LF
    kDiscard,       // error in this line: skip to LF
    kSasl,          // SASL response line
    kSaslLf,        // SASL response line, after CR
    kFatal,         // dead until reset()
  };
  enum class ArgKind : uint8_t { kAtom, kString, kListMarker };

  void beginLine() noexcept;
  ImapStatus step(char c) noexcept;
  ImapStatus afterArg(char c) noexcept;
  ImapStatus argStart(char c) noexcept;
  ImapStatus literalHeaderDone() noexcept;
  ImapStatus lineDone() noexcept;
  ImapStatus endLine(ImapStatus s) noexcept;
  void syntaxError(const char* text) noexcept;
  void setError(const char* text) noexcept;
  bool beginArg() noexcept;
  size_t literalBudget() const noexcept;
  void pushArg(ArgKind kind, bool open, bool close) noexcept;
  bool append(char c) noexcept;
  void finishVerb() noexcept;
  const char* validate() const noexcept;

  ImapLimits limits_;
  ImapCommand cmd_;
  std::unique_ptr<char[]> buf_;  // one buffer, allocated once at construction
  size_t cap_ = 0;               // 2 * max_line + literalBudget()
  size_t len_ = 0;
  size_t tok_start_ = 0;
  size_t tag_len_ = 0;      // the tag stays at buf_[0, tag_len_) (kept in SASL mode)
  size_t line_octets_ = 0;  // octets of this command outside literal data, CRLFs included
  size_t lit_total_ = 0;    // literal octets stored for this command
  uint64_t lit_len_ = 0;    // announced literal size (saturating)
  size_t lit_left_ = 0;     // literal octets still to come
  uint32_t lit_digits_ = 0;
  uint32_t verb_max_args_ = 0;
  uint32_t depth_ = 0;  // parenthesis depth
  bool reported_ = false;  // the current line's error was already returned
  State state_ = State::kTag;
  bool lit_plus_ = false;
  bool lit_store_ = false;
  bool after_open_ = false;  // kArgStart right after "(": ")" allowed
  bool tag_done_ = false;
  bool literal_ok_ = false;  // the verb takes astrings that may be literals
  bool clear_next_ = false;  // the last feed() ended a line: the next one starts afresh
  bool sasl_mode_ = false;   // the next line is a SASL response
  bool sasl_line_active_ = false;
  const char* err_ = nullptr;  // first error of the current line
  std::string_view sasl_line_;
  ArgKind kinds_[64] = {};
};

}  // namespace mailgate::codec
