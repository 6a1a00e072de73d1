#include "gateway/codec/imap_command.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "gateway/core/ascii.h"

namespace mailgate::codec {
namespace {

// A line (outside literal data) longer than max_line is discarded up to its LF and
// reported as kError; one longer than kFatalLineFactor * max_line is kFatal at once.
constexpr size_t kFatalLineFactor = 4;
constexpr uint32_t kMaxDepth = 8;    // parenthesis nesting (ID needs 1)
// RFC 2971 §3.3: at most 30 field-value pairs, fields of at most 30 octets, values
// of at most 1024 octets. A command within these bounds is accepted whatever
// max_literal says (max_line must hold the line: 64K does, quoted and escaped).
constexpr uint32_t kIdMaxPairs = 30;
constexpr uint32_t kIdMaxArgs = 2 * kIdMaxPairs + 2;  // "(" + 30 pairs + ")"
constexpr size_t kIdMaxField = 30;
constexpr size_t kIdMaxValue = 1024;
constexpr size_t kIdMaxStringOctets = kIdMaxPairs * (kIdMaxField + kIdMaxValue);
constexpr uint64_t kLiteralSaturate = uint64_t{1} << 40;

constexpr const char* kErrEmpty = "Empty command line.";
constexpr const char* kErrTag = "Invalid tag.";
constexpr const char* kErrNoCommand = "Missing command.";
constexpr const char* kErrCommand = "Invalid command name.";
constexpr const char* kErrSyntax = "Syntax error in arguments.";
constexpr const char* kErrArgs = "Invalid arguments.";
constexpr const char* kErrQuoted = "Invalid quoted string.";
constexpr const char* kErrLiteral = "Invalid literal.";
constexpr const char* kErrLineTooLong = "[TOOBIG] Command line too long.";
constexpr const char* kErrLiteralTooBig = "[TOOBIG] Literal too big.";
constexpr const char* kErrIdLimits =
    "[LIMIT] ID takes at most 30 pairs, fields of at most 30 octets, values of at most 1024 (RFC 2971).";
constexpr const char* kErrBareLf = "Line ends with bare LF.";
constexpr const char* kErrBareCr = "Bare CR in command line.";
constexpr const char* kErrNul = "NUL in command line.";
constexpr const char* kErrNulLiteral = "NUL in literal.";
constexpr const char* kErrDead = "Connection state is invalid.";

// RFC 9051: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
constexpr bool isAtomChar(char ch) noexcept {
  const auto c = static_cast<unsigned char>(ch);
  if (c <= 0x20 || c >= 0x7f) return false;
  switch (c) {
    case '(':
    case ')':
    case '{':
    case '%':
    case '*':
    case '"':
    case '\\':
    case ']':
      return false;
    default:
      return true;
  }
}
constexpr bool isAstringChar(char c) noexcept { return isAtomChar(c) || c == ']'; }
constexpr bool isTagChar(char c) noexcept { return isAstringChar(c) && c != '+'; }

ImapVerb classify(std::string_view v) noexcept {
  switch (v.size()) {
    case 2:
      if (ascii::iequals(v, "ID")) return ImapVerb::kId;
      break;
    case 4:
      if (ascii::iequals(v, "NOOP")) return ImapVerb::kNoop;
      break;
    case 5:
      if (ascii::iequals(v, "LOGIN")) return ImapVerb::kLogin;
      break;
    case 6:
      if (ascii::iequals(v, "LOGOUT")) return ImapVerb::kLogout;
      break;
    case 8:
      if (ascii::iequals(v, "STARTTLS")) return ImapVerb::kStarttls;
      break;
    case 10:
      if (ascii::iequals(v, "CAPABILITY")) return ImapVerb::kCapability;
      break;
    case 12:
      if (ascii::iequals(v, "AUTHENTICATE")) return ImapVerb::kAuthenticate;
      break;
    default:
      break;
  }
  return ImapVerb::kOther;
}

constexpr bool isBase64Char(char c) noexcept {
  return ascii::isAlpha(c) || ascii::isDigit(c) || c == '+' || c == '/';
}

// RFC 4959 initial-resp = base64 / "="; base64 = *(4base64-char) [base64-terminal]
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

}  // namespace

ImapCommandParser::ImapCommandParser(ImapLimits limits) noexcept : limits_(limits) {
  limits_.max_args = std::min<uint32_t>(limits_.max_args, 64);
  // Decoded tokens never exceed the raw octets: the tag (kept in SASL mode) and one
  // line fit in 2 * max_line, literals of one command in literalBudget().
  cap_ = 2 * size_t{limits_.max_line} + literalBudget();
  // Not value-initialised: untouched pages of a large buffer cost no resident memory.
  buf_.reset(new (std::nothrow) char[cap_ == 0 ? 1 : cap_]);
  if (!buf_) cap_ = 0;
  reset();
}

void ImapCommandParser::reset() noexcept {
  sasl_mode_ = false;
  tag_len_ = 0;
  clear_next_ = false;
  beginLine();
}

void ImapCommandParser::beginLine() noexcept {
  clear_next_ = false;
  reported_ = false;
  cmd_.tag = {};
  cmd_.verb_text = {};
  cmd_.verb = ImapVerb::kUnknown;
  cmd_.argc = 0;
  sasl_line_ = {};
  err_ = nullptr;
  line_octets_ = 0;
  lit_total_ = 0;
  lit_len_ = 0;
  lit_left_ = 0;
  lit_digits_ = 0;
  lit_plus_ = false;
  lit_store_ = false;
  depth_ = 0;
  after_open_ = false;
  verb_max_args_ = 0;
  literal_ok_ = false;
  sasl_line_active_ = sasl_mode_;
  if (sasl_mode_) {
    // Keep the AUTHENTICATE tag for errorTag(); the response line follows it.
    len_ = tag_len_;
    tag_done_ = tag_len_ > 0;
    if (tag_done_) cmd_.tag = std::string_view(buf_.get(), tag_len_);
    state_ = State::kSasl;
  } else {
    len_ = 0;
    tag_len_ = 0;
    tag_done_ = false;
    state_ = State::kTag;
  }
  tok_start_ = len_;
}

void ImapCommandParser::expectSaslLine() noexcept {
  if (state_ == State::kFatal) return;
  sasl_mode_ = true;
  if (!hasPending()) clear_next_ = true;  // the next feed() starts a SASL line
}

std::string_view ImapCommandParser::saslLine() const noexcept { return sasl_line_; }

bool ImapCommandParser::hasPending() const noexcept {
  // An over-long line already answered is being discarded, not buffered.
  return !clear_next_ && line_octets_ > 0 && state_ != State::kFatal && !reported_;
}

bool ImapCommandParser::ownsView(std::string_view v) const noexcept {
  if (v.empty()) return true;
  const char* b = buf_.get();
  return b != nullptr && v.data() >= b && v.data() + v.size() <= b + len_;
}

std::string_view ImapCommandParser::errorTag() const noexcept {
  if (tag_done_ && tag_len_ > 0) return std::string_view(buf_.get(), tag_len_);
  return "*";
}

std::string_view ImapCommandParser::errorText() const noexcept { return err_ != nullptr ? err_ : ""; }

void ImapCommandParser::setError(const char* text) noexcept {
  if (err_ == nullptr) err_ = text;
}

void ImapCommandParser::syntaxError(const char* text) noexcept {
  setError(text);
  state_ = State::kDiscard;
}

bool ImapCommandParser::append(char c) noexcept {
  if (len_ >= cap_) {  // cannot happen with the limits enforced; never write past the buffer
    setError(kErrLineTooLong);
    return false;
  }
  buf_[len_++] = c;
  return true;
}

ImapStatus ImapCommandParser::endLine(ImapStatus s) noexcept {
  clear_next_ = true;
  if (sasl_line_active_) sasl_mode_ = false;  // one response line per expectSaslLine()
  state_ = State::kTag;
  return s;
}

ImapFeed ImapCommandParser::feed(std::string_view input) noexcept {
  if (state_ == State::kFatal) return {ImapStatus::kFatal, 0};
  if (clear_next_) beginLine();
  size_t i = 0;
  const size_t n = input.size();
  while (i < n) {
    if (state_ == State::kLitData) {
      const size_t take = std::min(lit_left_, n - i);
      const char* src = input.data() + i;
      if (std::memchr(src, '\0', take) != nullptr) {
        setError(kErrNulLiteral);
        lit_store_ = false;
      }
      if (lit_store_ && err_ == nullptr) {
        std::memcpy(buf_.get() + len_, src, take);  // room reserved by literalHeaderDone()
        len_ += take;
      }
      i += take;
      lit_left_ -= take;
      if (lit_left_ == 0) {
        if (lit_store_ && err_ == nullptr) pushArg(ArgKind::kString, false, false);
        state_ = State::kAfterArg;
      }
      continue;
    }
    const char c = input[i++];
    ++line_octets_;
    const size_t limit = limits_.max_line;
    if (line_octets_ > kFatalLineFactor * limit) {
      err_ = kErrLineTooLong;
      state_ = State::kFatal;
      return {ImapStatus::kFatal, i};
    }
    if (line_octets_ > limit && state_ != State::kDiscard) {
      // Reported at once, not at the LF that may never come; the rest of the line
      // is then discarded silently.
      err_ = kErrLineTooLong;
      state_ = State::kDiscard;
      if (c != '\n') {
        reported_ = true;
        return {ImapStatus::kError, i};
      }
    }
    const ImapStatus s = step(c);
    if (s != ImapStatus::kNeedMore) return {s, i};
  }
  return {ImapStatus::kNeedMore, i};
}

ImapStatus ImapCommandParser::step(char c) noexcept {
  // Framing first: CRLF only, no NUL (outside literal data).
  if (c == '\n') {
    switch (state_) {
      case State::kLf:
        return lineDone();
      case State::kLitLf:
        return literalHeaderDone();
      case State::kSaslLf:
        if (err_ != nullptr) return endLine(ImapStatus::kError);
        sasl_line_ = std::string_view(buf_.get() + tok_start_, len_ - tok_start_);
        return endLine(ImapStatus::kSaslLine);
      case State::kDiscard:
        if (reported_) {  // the error went out when the limit was crossed
          reported_ = false;
          if (sasl_line_active_) sasl_mode_ = false;
          beginLine();
          return ImapStatus::kNeedMore;
        }
        return endLine(ImapStatus::kError);
      case State::kTag:
      case State::kVerb:
      case State::kArgStart:
      case State::kAtom:
      case State::kQuoted:
      case State::kQuotedEscape:
      case State::kLitLen:
      case State::kLitPlus:
      case State::kLitCr:
      case State::kLitData:
      case State::kAfterArg:
      case State::kSasl:
      case State::kFatal:
        setError(kErrBareLf);
        return endLine(ImapStatus::kError);
    }
  }
  if (c == '\0' && state_ != State::kDiscard) {
    syntaxError(kErrNul);
    return ImapStatus::kNeedMore;
  }
  switch (state_) {
    case State::kTag:
      if (isTagChar(c)) {
        append(c);
      } else if ((c == ' ' || c == '\r') && len_ > 0) {
        tag_len_ = len_;
        tag_done_ = true;
        cmd_.tag = std::string_view(buf_.get(), tag_len_);
        tok_start_ = len_;
        if (c == ' ') {
          state_ = State::kVerb;
        } else {
          setError(kErrNoCommand);
          state_ = State::kLf;
        }
      } else if (c == '\r' && len_ == 0) {
        setError(kErrEmpty);
        state_ = State::kLf;
      } else {
        syntaxError(kErrTag);
      }
      return ImapStatus::kNeedMore;
    case State::kVerb:
      if (isAtomChar(c)) {
        append(c);
      } else if ((c == ' ' || c == '\r') && len_ > tok_start_) {
        finishVerb();
        if (c == ' ') {
          state_ = State::kArgStart;
          after_open_ = false;
        } else {
          state_ = State::kLf;
        }
      } else {
        syntaxError(len_ > tok_start_ ? kErrCommand : kErrNoCommand);
      }
      return ImapStatus::kNeedMore;
    case State::kArgStart:
      return argStart(c);
    case State::kAtom:
      if (isAstringChar(c) || (cmd_.verb == ImapVerb::kOther && (c == '*' || c == '%'))) {
        if (err_ == nullptr) append(c);
        return ImapStatus::kNeedMore;
      }
      if (err_ == nullptr) pushArg(ArgKind::kAtom, false, false);
      return afterArg(c);
    case State::kQuoted:
      if (c == '"') {
        if (err_ == nullptr) pushArg(ArgKind::kString, false, false);
        state_ = State::kAfterArg;
      } else if (c == '\\') {
        state_ = State::kQuotedEscape;
      } else if (c == '\r') {
        syntaxError(kErrQuoted);
      } else if (err_ == nullptr) {
        append(c);
      }
      return ImapStatus::kNeedMore;
    case State::kQuotedEscape:
      if (c == '"' || c == '\\') {
        if (err_ == nullptr) append(c);
        state_ = State::kQuoted;
      } else {
        syntaxError(kErrQuoted);
      }
      return ImapStatus::kNeedMore;
    case State::kLitLen:
      if (c >= '0' && c <= '9') {
        ++lit_digits_;
        lit_len_ = lit_len_ * 10 + static_cast<uint64_t>(c - '0');
        if (lit_len_ > kLiteralSaturate) lit_len_ = kLiteralSaturate;
      } else if (c == '+' && lit_digits_ > 0) {
        lit_plus_ = true;
        state_ = State::kLitPlus;
      } else if (c == '}' && lit_digits_ > 0) {
        state_ = State::kLitCr;
      } else {
        syntaxError(kErrLiteral);
      }
      return ImapStatus::kNeedMore;
    case State::kLitPlus:
      if (c == '}') {
        state_ = State::kLitCr;
      } else {
        syntaxError(kErrLiteral);
      }
      return ImapStatus::kNeedMore;
    case State::kLitCr:
      if (c == '\r') {
        state_ = State::kLitLf;
      } else {
        syntaxError(kErrLiteral);
      }
      return ImapStatus::kNeedMore;
    case State::kLitLf:
    case State::kLf:
    case State::kSaslLf:
      syntaxError(kErrBareCr);  // CR not followed by LF
      return ImapStatus::kNeedMore;
    case State::kAfterArg:
      return afterArg(c);
    case State::kDiscard:
      return ImapStatus::kNeedMore;
    case State::kSasl:
      if (c == '\r') {
        state_ = State::kSaslLf;
      } else {
        append(c);
      }
      return ImapStatus::kNeedMore;
    case State::kLitData:  // handled in feed()
    case State::kFatal:
      err_ = kErrDead;
      state_ = State::kFatal;
      return ImapStatus::kFatal;
  }
  return ImapStatus::kNeedMore;
}

void ImapCommandParser::finishVerb() noexcept {
  cmd_.verb_text = std::string_view(buf_.get() + tok_start_, len_ - tok_start_);
  cmd_.verb = classify(cmd_.verb_text);
  switch (cmd_.verb) {
    case ImapVerb::kCapability:
    case ImapVerb::kNoop:
    case ImapVerb::kLogout:
    case ImapVerb::kStarttls:
    case ImapVerb::kUnknown:
      verb_max_args_ = 0;
      literal_ok_ = false;
      break;
    case ImapVerb::kLogin:
      verb_max_args_ = 2;
      literal_ok_ = true;
      break;
    case ImapVerb::kAuthenticate:
      verb_max_args_ = 2;
      literal_ok_ = false;  // auth-type and initial-resp are atoms
      break;
    case ImapVerb::kId:
      verb_max_args_ = kIdMaxArgs;
      literal_ok_ = true;
      break;
    case ImapVerb::kOther:
      verb_max_args_ = limits_.max_args;
      literal_ok_ = false;  // never invite data for a command that will be refused
      break;
  }
  verb_max_args_ = std::min(verb_max_args_, limits_.max_args);
  tok_start_ = len_;
}

size_t ImapCommandParser::literalBudget() const noexcept {
  // LOGIN: two literals of max_literal; ID: its 60 strings at their RFC 2971 bounds.
  return std::max(2 * size_t{limits_.max_literal}, kIdMaxStringOctets);
}

bool ImapCommandParser::beginArg() noexcept {
  if (cmd_.argc >= verb_max_args_) setError(cmd_.verb == ImapVerb::kId ? kErrIdLimits : kErrArgs);
  tok_start_ = len_;
  return err_ == nullptr;
}

void ImapCommandParser::pushArg(ArgKind kind, bool open, bool close) noexcept {
  if (cmd_.argc >= verb_max_args_ || cmd_.argc >= 64) {  // beginArg() already flagged it
    setError(kErrArgs);
    return;
  }
  ImapArg& a = cmd_.args[cmd_.argc];
  a.value = std::string_view(buf_.get() + tok_start_, len_ - tok_start_);
  a.is_nil = kind == ArgKind::kAtom && ascii::iequals(a.value, "NIL");
  a.is_list_open = open;
  a.is_list_close = close;
  kinds_[cmd_.argc] = kind;
  ++cmd_.argc;
}

ImapStatus ImapCommandParser::argStart(char c) noexcept {
  switch (c) {
    case '"':
      beginArg();
      state_ = State::kQuoted;
      return ImapStatus::kNeedMore;
    case '{':
      beginArg();
      if (!literal_ok_) setError(kErrArgs);
      lit_len_ = 0;
      lit_digits_ = 0;
      lit_plus_ = false;
      state_ = State::kLitLen;
      return ImapStatus::kNeedMore;
    case '(':
      if (depth_ >= kMaxDepth) {
        syntaxError(kErrSyntax);
        return ImapStatus::kNeedMore;
      }
      ++depth_;
      if (beginArg()) {
        if (append('(')) pushArg(ArgKind::kListMarker, true, false);
      }
      after_open_ = true;  // stay in kArgStart
      return ImapStatus::kNeedMore;
    case ')':
      if (!after_open_ || depth_ == 0) {
        syntaxError(kErrSyntax);
        return ImapStatus::kNeedMore;
      }
      return afterArg(c);  // "()" is an empty list
    default:
      break;
  }
  if (isAstringChar(c) || (cmd_.verb == ImapVerb::kOther && (c == '*' || c == '%'))) {
    if (beginArg()) append(c);
    state_ = State::kAtom;
    return ImapStatus::kNeedMore;
  }
  syntaxError(kErrSyntax);
  return ImapStatus::kNeedMore;
}

ImapStatus ImapCommandParser::afterArg(char c) noexcept {
  switch (c) {
    case ' ':
      state_ = State::kArgStart;
      after_open_ = false;
      return ImapStatus::kNeedMore;
    case ')':
      if (depth_ == 0) {
        syntaxError(kErrSyntax);
        return ImapStatus::kNeedMore;
      }
      --depth_;
      if (beginArg()) {
        if (append(')')) pushArg(ArgKind::kListMarker, false, true);
      }
      state_ = State::kAfterArg;
      return ImapStatus::kNeedMore;
    case '\r':
      if (depth_ != 0) {
        syntaxError(kErrSyntax);
        return ImapStatus::kNeedMore;
      }
      state_ = State::kLf;
      return ImapStatus::kNeedMore;
    default:
      syntaxError(kErrSyntax);
      return ImapStatus::kNeedMore;
  }
}

ImapStatus ImapCommandParser::literalHeaderDone() noexcept {
  // LOGIN's strings are bounded by max_literal; ID's by RFC 2971 (the literal being
  // announced is argument cmd_.argc: odd ones are field names, even ones values).
  const bool id = cmd_.verb == ImapVerb::kId;
  const size_t bound = !id ? limits_.max_literal : (cmd_.argc % 2 == 1 ? kIdMaxField : kIdMaxValue);
  const char* too_big_text = id ? kErrIdLimits : kErrLiteralTooBig;
  const bool too_big = lit_len_ > bound;
  const bool over_budget = lit_total_ + lit_len_ > literalBudget();
  if (!lit_plus_) {
    // Synchronising: without our "+" the client sends nothing more for this command.
    if (err_ == nullptr && (too_big || over_budget)) setError(too_big ? too_big_text : kErrLiteralTooBig);
    if (err_ != nullptr) return endLine(ImapStatus::kError);
  } else if (lit_len_ > std::max<size_t>(limits_.max_literal, id ? kIdMaxValue : 0)) {
    // LITERAL+: the data is already on its way and we will not read it (RFC 7888 allows
    // closing); the session replies "<tag> BAD [TOOBIG]" / "* BYE" and closes.
    err_ = kErrLiteralTooBig;
    state_ = State::kFatal;
    return ImapStatus::kFatal;
  } else if (err_ == nullptr && (too_big || over_budget)) {
    setError(too_big ? too_big_text : kErrLiteralTooBig);  // skip the (bounded) data, then fail the command
  }
  lit_left_ = static_cast<size_t>(lit_len_);
  if (err_ == nullptr && len_ + lit_left_ > cap_) setError(kErrLiteralTooBig);  // defensive
  lit_store_ = err_ == nullptr;
  if (lit_store_) lit_total_ += lit_left_;
  tok_start_ = len_;
  state_ = State::kLitData;
  if (lit_left_ == 0) {
    if (lit_store_) pushArg(ArgKind::kString, false, false);
    state_ = State::kAfterArg;
  }
  return lit_plus_ ? ImapStatus::kNeedMore : ImapStatus::kContinuation;
}

ImapStatus ImapCommandParser::lineDone() noexcept {
  if (err_ == nullptr) err_ = validate();
  return endLine(err_ == nullptr ? ImapStatus::kCommand : ImapStatus::kError);
}

const char* ImapCommandParser::validate() const noexcept {
  const uint32_t argc = cmd_.argc;
  const ImapArg* a = cmd_.args;
  switch (cmd_.verb) {
    case ImapVerb::kCapability:
    case ImapVerb::kNoop:
    case ImapVerb::kLogout:
    case ImapVerb::kStarttls:
      return argc == 0 ? nullptr : kErrArgs;
    case ImapVerb::kLogin:
      if (argc != 2 || kinds_[0] == ArgKind::kListMarker || kinds_[1] == ArgKind::kListMarker)
        return kErrArgs;
      return nullptr;
    case ImapVerb::kAuthenticate:
      if (argc < 1 || argc > 2 || kinds_[0] != ArgKind::kAtom) return kErrArgs;
      if (a[0].value.find(']') != std::string_view::npos) return kErrArgs;
      if (argc == 2 && (kinds_[1] != ArgKind::kAtom || !isInitialResponse(a[1].value))) return kErrArgs;
      return nullptr;
    case ImapVerb::kId: {
      if (argc == 1 && a[0].is_nil) return nullptr;
      if (argc < 2 || !a[0].is_list_open || !a[argc - 1].is_list_close) return kErrArgs;
      const uint32_t items = argc - 2;
      if (items % 2 != 0) return kErrArgs;
      if (items / 2 > kIdMaxPairs) return kErrIdLimits;
      for (uint32_t i = 1; i + 1 < argc; ++i) {
        if (kinds_[i] == ArgKind::kListMarker) return kErrArgs;
        const bool field = (i % 2) == 1;
        if (field && a[i].is_nil) return kErrArgs;  // field names are strings
        if (a[i].value.size() > (field ? kIdMaxField : kIdMaxValue)) return kErrIdLimits;
      }
      return nullptr;
    }
    case ImapVerb::kOther:
      return nullptr;
    case ImapVerb::kUnknown:
      return kErrNoCommand;
  }
  return kErrNoCommand;
}

}  // namespace mailgate::codec
