#pragma once
// POP3 client-command parser for the AUTHORIZATION state (RFC 1939, 2449, 2595,
// 5034). PURE: no I/O, no clock, no logging. Any split of the input accepted.
//
// feed() stops after each complete command, SASL line or error. Errors are reported
// once per line, when its LF arrives (the parser is then in sync). A line over its
// limit (max_line, or max_sasl_line in SASL mode; CRLF included) is discarded up to
// LF without buffering, then kError; over 4 times the limit without LF: kFatal at
// once. Bare LF ends the line with kError; CR not followed by LF and NUL are kError
// at the next LF. The verb is 3-4 letters; arguments are separated by single spaces
// (no empty arguments, no control characters); PASS takes the rest of the line.
// SASL mode is one-shot: call expectSaslLine() for each response line.
// After kFatal, feed() returns {kFatal, 0} until reset().
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace mailgate::codec {

enum class Pop3Verb { kUnknown, kCapa, kStls, kUser, kPass, kAuth, kQuit, kNoop, kOther };

struct Pop3Limits {
  uint32_t max_line = 512;  // command line incl. CRLF (RFC 2449 says 255; we allow more for long passwords)
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
  // True when `v` lies inside the parser's own buffer (tests and fuzz targets).
  bool ownsView(std::string_view v) const noexcept;

 private:
  enum class State : uint8_t { kVerb, kArg, kRest, kLf, kDiscard, kSasl, kSaslLf, kFatal };

  void beginLine() noexcept;
  Pop3Status step(char c) noexcept;
  Pop3Status endLine(Pop3Status s) noexcept;
  void setError(std::string_view text) noexcept;
  void syntaxError(std::string_view text) noexcept;
  bool finishArg() noexcept;
  void finishVerb() noexcept;
  std::string_view validate() const noexcept;

  Pop3Limits limits_;
  Pop3Command cmd_;
  std::unique_ptr<char[]> buf_;  // max(max_line, max_sasl_line), allocated once
  size_t cap_ = 0;
  size_t len_ = 0;
  size_t tok_start_ = 0;
  size_t line_octets_ = 0;  // CRLF included
  State state_ = State::kVerb;
  bool clear_next_ = false;
  bool sasl_mode_ = false;
  bool sasl_line_active_ = false;
  std::string_view err_text_, sasl_line_;
};

}  // namespace mailgate::codec
