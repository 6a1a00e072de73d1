#include "gateway/codec/pop3_command.h"

#include <algorithm>
#include <new>

#include "gateway/core/ascii.h"

namespace mailgate::codec {
namespace {

constexpr size_t kFatalLineFactor = 4;
constexpr uint32_t kMaxArgs = 4;

constexpr std::string_view kErrEmpty = "Empty command.";
constexpr std::string_view kErrCommand = "Invalid command.";
constexpr std::string_view kErrArgs = "Invalid arguments.";
constexpr std::string_view kErrLineTooLong = "Line too long.";
constexpr std::string_view kErrBareLf = "Line ends with bare LF.";
constexpr std::string_view kErrBareCr = "Bare CR in command line.";
constexpr std::string_view kErrNul = "NUL in command line.";
constexpr std::string_view kErrDead = "Connection state is invalid.";

constexpr bool isCtl(char ch) noexcept {
  const auto c = static_cast<unsigned char>(ch);
  return c < 0x20 || c == 0x7f;
}

Pop3Verb classify(std::string_view v) noexcept {
  if (v.size() != 4) return Pop3Verb::kOther;
  switch (ascii::toUpper(v[0])) {
    case 'A':
      if (ascii::iequals(v, "AUTH")) return Pop3Verb::kAuth;
      break;
    case 'C':
      if (ascii::iequals(v, "CAPA")) return Pop3Verb::kCapa;
      break;
    case 'N':
      if (ascii::iequals(v, "NOOP")) return Pop3Verb::kNoop;
      break;
    case 'P':
      if (ascii::iequals(v, "PASS")) return Pop3Verb::kPass;
      break;
    case 'Q':
      if (ascii::iequals(v, "QUIT")) return Pop3Verb::kQuit;
      break;
    case 'S':
      if (ascii::iequals(v, "STLS")) return Pop3Verb::kStls;
      break;
    case 'U':
      if (ascii::iequals(v, "USER")) return Pop3Verb::kUser;
      break;
    default:
      break;
  }
  return Pop3Verb::kOther;
}

}  // namespace

Pop3CommandParser::Pop3CommandParser(Pop3Limits limits) noexcept : limits_(limits) {
  cap_ = std::max<size_t>(limits_.max_line, limits_.max_sasl_line);
  buf_.reset(new (std::nothrow) char[cap_ == 0 ? 1 : cap_]);
  if (!buf_) cap_ = 0;
  reset();
}

void Pop3CommandParser::reset() noexcept {
  sasl_mode_ = false;
  beginLine();
}

void Pop3CommandParser::beginLine() noexcept {
  clear_next_ = false;
  cmd_.verb = Pop3Verb::kUnknown;
  cmd_.verb_text = {};
  cmd_.argc = 0;
  for (auto& a : cmd_.args) a = {};
  err_text_ = {};
  sasl_line_ = {};
  len_ = 0;
  tok_start_ = 0;
  line_octets_ = 0;
  sasl_line_active_ = sasl_mode_;
  state_ = sasl_mode_ ? State::kSasl : State::kVerb;
}

void Pop3CommandParser::expectSaslLine() noexcept {
  if (state_ == State::kFatal) return;
  sasl_mode_ = true;
  if (!hasPending()) clear_next_ = true;
}

bool Pop3CommandParser::hasPending() const noexcept {
  return !clear_next_ && line_octets_ > 0 && state_ != State::kFatal;
}

bool Pop3CommandParser::ownsView(std::string_view v) const noexcept {
  if (v.empty()) return true;
  const char* b = buf_.get();
  return b != nullptr && v.data() >= b && v.data() + v.size() <= b + len_;
}

void Pop3CommandParser::setError(std::string_view text) noexcept {
  if (err_text_.empty()) err_text_ = text;
}

void Pop3CommandParser::syntaxError(std::string_view text) noexcept {
  setError(text);
  state_ = State::kDiscard;
}

Pop3Status Pop3CommandParser::endLine(Pop3Status s) noexcept {
  clear_next_ = true;
  if (sasl_line_active_) sasl_mode_ = false;
  state_ = State::kVerb;
  return s;
}

Pop3Feed Pop3CommandParser::feed(std::string_view input) noexcept {
  if (state_ == State::kFatal) return {Pop3Status::kFatal, 0};
  if (clear_next_) beginLine();
  const size_t limit = sasl_line_active_ ? limits_.max_sasl_line : limits_.max_line;
  for (size_t i = 0; i < input.size();) {
    const char c = input[i++];
    ++line_octets_;
    if (line_octets_ > kFatalLineFactor * limit) {
      err_text_ = kErrLineTooLong;
      state_ = State::kFatal;
      return {Pop3Status::kFatal, i};
    }
    if (line_octets_ > limit && state_ != State::kDiscard) {
      err_text_ = kErrLineTooLong;  // overrides an earlier error of the line
      state_ = State::kDiscard;
    }
    const Pop3Status s = step(c);
    if (s != Pop3Status::kNeedMore) return {s, i};
  }
  return {Pop3Status::kNeedMore, input.size()};
}

Pop3Status Pop3CommandParser::step(char c) noexcept {
  if (c == '\n') {
    switch (state_) {
      case State::kLf:
        if (err_text_.empty()) err_text_ = validate();
        return endLine(err_text_.empty() ? Pop3Status::kCommand : Pop3Status::kError);
      case State::kSaslLf:
        if (!err_text_.empty()) return endLine(Pop3Status::kError);
        sasl_line_ = std::string_view(buf_.get(), len_);
        return endLine(Pop3Status::kSaslLine);
      case State::kDiscard:
        return endLine(Pop3Status::kError);
      case State::kVerb:
      case State::kArg:
      case State::kRest:
      case State::kSasl:
      case State::kFatal:
        setError(kErrBareLf);
        return endLine(Pop3Status::kError);
    }
  }
  if (c == '\0' && state_ != State::kDiscard) {
    syntaxError(kErrNul);
    return Pop3Status::kNeedMore;
  }
  switch (state_) {
    case State::kVerb:
      if (ascii::isAlpha(c) && len_ < 4) {
        if (len_ < cap_) buf_[len_++] = c;
      } else if (c == ' ' || c == '\r') {
        if (len_ < 3) {
          if (c == ' ') {
            syntaxError(kErrCommand);
          } else {
            setError(len_ == 0 ? kErrEmpty : kErrCommand);
            state_ = State::kLf;
          }
          return Pop3Status::kNeedMore;
        }
        finishVerb();
        if (c == '\r') {
          state_ = State::kLf;
        } else {
          state_ = cmd_.verb == Pop3Verb::kPass ? State::kRest : State::kArg;
        }
      } else {
        syntaxError(kErrCommand);
      }
      return Pop3Status::kNeedMore;
    case State::kArg:
      if (c == ' ' || c == '\r') {
        if (!finishArg()) {
          syntaxError(kErrArgs);
        } else {
          state_ = c == ' ' ? State::kArg : State::kLf;
        }
      } else if (isCtl(c)) {
        syntaxError(kErrArgs);
      } else if (len_ < cap_) {
        buf_[len_++] = c;
      }
      return Pop3Status::kNeedMore;
    case State::kRest:
      if (c == '\r') {
        if (!finishArg()) setError(kErrArgs);
        state_ = State::kLf;
      } else if (len_ < cap_) {
        buf_[len_++] = c;
      }
      return Pop3Status::kNeedMore;
    case State::kLf:
    case State::kSaslLf:
      syntaxError(kErrBareCr);
      return Pop3Status::kNeedMore;
    case State::kDiscard:
      return Pop3Status::kNeedMore;
    case State::kSasl:
      if (c == '\r') {
        state_ = State::kSaslLf;
      } else if (len_ < cap_) {
        buf_[len_++] = c;
      }
      return Pop3Status::kNeedMore;
    case State::kFatal:
      err_text_ = kErrDead;
      return Pop3Status::kFatal;
  }
  return Pop3Status::kNeedMore;
}

void Pop3CommandParser::finishVerb() noexcept {
  cmd_.verb_text = std::string_view(buf_.get(), len_);
  cmd_.verb = classify(cmd_.verb_text);
  tok_start_ = len_;
}

bool Pop3CommandParser::finishArg() noexcept {
  if (len_ == tok_start_ || cmd_.argc >= kMaxArgs) return false;
  cmd_.args[cmd_.argc++] = std::string_view(buf_.get() + tok_start_, len_ - tok_start_);
  tok_start_ = len_;
  return true;
}

std::string_view Pop3CommandParser::validate() const noexcept {
  switch (cmd_.verb) {
    case Pop3Verb::kCapa:
    case Pop3Verb::kStls:
    case Pop3Verb::kQuit:
    case Pop3Verb::kNoop:
      return cmd_.argc == 0 ? std::string_view{} : kErrArgs;
    case Pop3Verb::kUser:
    case Pop3Verb::kPass:
      return cmd_.argc == 1 ? std::string_view{} : kErrArgs;
    case Pop3Verb::kAuth:  // mechanism [initial-response]; "AUTH" alone lists mechanisms (RFC 1734 practice)
      return cmd_.argc <= 2 ? std::string_view{} : kErrArgs;
    case Pop3Verb::kOther:
      return std::string_view{};
    case Pop3Verb::kUnknown:
      return kErrCommand;
  }
  return kErrCommand;
}

}  // namespace mailgate::codec
