#pragma once
// Follows the literal framing of an IMAP stream after login (RFC 9051 §4.3; LITERAL+
// and LITERAL- `{N+}`, RFC 7888; BINARY `~{N}`, RFC 3516) without parsing commands:
// the relay uses it to enforce APPENDLIMIT (RFC 7889) and to know where the node's
// responses end. Pure: no I/O, no clock, no logging; any split of the input.
//
// ImapAppendGuard (client → node). The start of every line (tag and command word) is
// held until the command is known; a line whose command is APPEND is held, segment by
// segment (each up to `max_line` octets), until it ends: with a literal larger than
// `append_limit` the segment is not forwarded and the guard reports kRefused. Every
// other byte (other commands, literal data of an allowed APPEND) is given back as a
// view into the caller's input, to forward as it is.
//
// After a refusal the rest of the command is dropped: a synchronizing literal is
// never sent by the client (it gets the refusal instead of "+"); a non-synchronizing
// one is sent anyway, and up to `max_swallow` octets are read and discarded; a larger
// one, or a too large literal after part of the command already went to the node
// (MULTIAPPEND's later messages), asks for the session to be closed (closeNeeded()),
// which also makes the node abandon the half-sent command.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::codec {

// The end of a line, as far as literals go: "{N}" / "{N+}" / "~{N}" right before the
// line feed means N octets of literal data follow.
class LiteralTail {
 public:
  // One octet of a line (not the LF).
  void push(char c) noexcept;
  // At the LF: does a literal follow, of how many octets, synchronizing or not?
  bool literal() const noexcept { return state_ == State::kClosed || state_ == State::kClosedCr; }
  uint64_t size() const noexcept { return n_; }
  bool nonSync() const noexcept { return plus_; }
  void reset() noexcept {
    state_ = State::kNone;
    n_ = 0;
    plus_ = false;
  }

 private:
  enum class State : uint8_t { kNone, kDigits, kPlus, kClosed, kClosedCr };
  State state_ = State::kNone;
  bool digits_ = false;
  bool plus_ = false;
  uint64_t n_ = 0;  // saturates at kHuge
};

class ImapAppendGuard {
 public:
  static constexpr uint64_t kHuge = ~uint64_t{0} >> 1;  // a literal size too large to represent

  struct Limits {
    uint64_t append_limit = 0;         // largest literal of an APPEND; 0 = no limit (nothing held)
    size_t max_line = 8192;            // a held segment (tag and command, an APPEND line) at most
    uint64_t max_swallow = 64 * 1024;  // a refused non-synchronizing literal read and discarded at most
  };
  enum class Action : uint8_t {
    kForward,   // `out` goes to the node as it is (a view into the input or into the guard)
    kNeedMore,  // the input is consumed: held, or dropped
    kRefused,   // a command was refused: reply (reason(), tag(), literalSize()); then closeNeeded()
    kAbort,     // while dropping a refused command: too much to swallow; close the session
  };
  enum class Reason : uint8_t { kTooBig, kLineTooLong };
  struct Step {
    Action action;
    size_t consumed;
    std::string_view out;  // kForward: valid until the next feed()
  };

  explicit ImapAppendGuard(Limits limits) : lim_(limits) {}

  Step feed(std::string_view in) noexcept;

  // The last refusal.
  Reason reason() const noexcept { return reason_; }
  std::string_view tag() const noexcept { return tag_; }  // "*" when unknown
  uint64_t literalSize() const noexcept { return refused_size_; }
  bool closeNeeded() const noexcept { return close_; }
  // Counters for tests and the fuzz target.
  bool atLineStart() const noexcept { return state_ == State::kLineStart && held_.empty(); }
  bool inAppend() const noexcept { return append_; }
  bool passthrough() const noexcept { return state_ == State::kPassthrough; }

 private:
  enum class State : uint8_t {
    kLineStart,
    kTag,          // held: the tag
    kCommand,      // held: the command word
    kLine,         // the rest of the line (held when in an APPEND)
    kLiteral,      // literal octets
    kPassthrough,  // after COMPRESS: the stream is no longer IMAP text
    kDead,         // after a refusal that closes the session
  };
  Step refuse(Reason why, size_t consumed, bool close) noexcept;
  Step endOfLine(size_t consumed) noexcept;
  void commandKnown() noexcept;

  Limits lim_;
  State state_ = State::kLineStart;
  std::string held_;      // the held segment
  bool release_ = false;  // held_ was given out: clear it on the next feed
  std::string tag_;
  size_t tag_len_ = 0;      // in held_: the tag's length
  size_t cmd_start_ = 0;    // in held_: where the command word starts
  bool append_ = false;     // the current command is APPEND
  bool compress_ = false;   // the current command is COMPRESS: passthrough after it
  bool forwarded_ = false;  // part of the current APPEND already went to the node
  bool dropping_ = false;   // the current command was refused: drop the rest
  LiteralTail tail_;
  uint64_t literal_left_ = 0;
  Reason reason_ = Reason::kTooBig;
  uint64_t refused_size_ = 0;
  bool close_ = false;
};

// The node → client direction: where its lines end (literals skipped), so that the
// gateway's own replies are put between two of the node's responses, never inside one.
class ImapResponseFramer {
 public:
  void feed(std::string_view in) noexcept;
  bool atBoundary() const noexcept { return literal_left_ == 0 && !mid_line_; }

 private:
  LiteralTail tail_;
  uint64_t literal_left_ = 0;
  bool mid_line_ = false;
};

}  // namespace mailgate::codec
