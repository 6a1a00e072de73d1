#pragma once
// IMAP client-command parser for the pre-authentication phase (RFC 9051 / 3501,
// RFC 7888 LITERAL+, RFC 4959 SASL-IR). PURE: no I/O, no clock, no logging.
//
// feed() accepts any split of the input. It stops after each complete command
// (status kCommand), when a synchronising literal needs the server's "+ "
// continuation (kContinuation), and after each error. The caller acts, then
// calls feed() again with the unconsumed rest.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
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
  uint32_t max_line = 8192;      // octets of one command line, excluding literal data
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
  std::string_view value;  // the decoded string (quotes/escapes removed, literal contents)
  bool is_nil = false;     // NIL atom
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

 private:
  // implementation state (see imap_command.cc)
  ImapLimits limits_;
  ImapCommand cmd_;
  std::string buf_;  // one line buffer reserved to max_line + literal capacity at construction
  // ... parser state; implementation may add members
  int state_ = 0;
  size_t literal_left_ = 0;
  bool sasl_mode_ = false;
  std::string_view err_tag_, err_text_, sasl_line_;
  std::string err_tag_buf_;
};

}  // namespace mailgate::codec
