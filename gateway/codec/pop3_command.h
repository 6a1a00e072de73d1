#pragma once
// POP3 client-command parser for the AUTHORIZATION state (RFC 1939, 2449, 2595,
// 5034). PURE: no I/O, no clock, no logging. Any split of the input accepted.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::codec {

enum class Pop3Verb { kUnknown, kCapa, kStls, kUser, kPass, kAuth, kQuit, kNoop, kOther };

struct Pop3Limits {
  uint32_t max_line = 512;        // command line incl. CRLF (RFC 2449 says 255; we allow more for long passwords)
  uint32_t max_sasl_line = 8192;  // one SASL response line (RFC 5034 allows long responses)
};

enum class Pop3Status {
  kNeedMore,
  kCommand,   // command() valid until next feed()/reset()
  kSaslLine,  // (only in SASL mode) saslLine() holds the client's response line
  kError,     // recoverable: reply "-ERR <errorText()>", resynchronised at the next line
  kFatal,     // framing/oversize beyond recovery: reply "-ERR", close
};

struct Pop3Command {
  Pop3Verb verb = Pop3Verb::kUnknown;
  std::string_view verb_text;
  // Arguments split on single spaces; for PASS the whole rest of the line is arg[0]
  // (RFC 1939 allows spaces in passwords in practice).
  std::string_view args[4];
  uint32_t argc = 0;
};

struct Pop3Feed {
  Pop3Status status;
  size_t consumed;
};

class Pop3CommandParser {
 public:
  explicit Pop3CommandParser(Pop3Limits limits) noexcept;
  Pop3Feed feed(std::string_view input) noexcept;
  const Pop3Command& command() const noexcept { return cmd_; }
  std::string_view errorText() const noexcept { return err_text_; }
  void expectSaslLine() noexcept;
  std::string_view saslLine() const noexcept { return sasl_line_; }
  void reset() noexcept;
  bool hasPending() const noexcept;

 private:
  Pop3Limits limits_;
  Pop3Command cmd_;
  std::string buf_;
  bool sasl_mode_ = false;
  bool discarding_ = false;
  std::string_view err_text_, sasl_line_;
};

}  // namespace mailgate::codec
