#pragma once
// SMTP message content decoders: DATA (RFC 5321 §4.5.2, dot-stuffing) and BDAT
// (RFC 3030 CHUNKING). PURE: no I/O, no clock, no logging, no allocation.
//
// SmtpDataDecoder — input: the raw bytes after the 354 reply; output: the message,
// dot-unstuffed, CRLFs kept as they are, written to a caller's SmtpBodySink.
// Behaviour choices (the SMTP smuggling defence, SEC Consult, December 2023):
// - The end of data is ONLY <CRLF>.<CRLF>. Data starts at a line start (the DATA line
//   ended with CRLF), so ".\r\n" first is the empty message. A line start is only
//   ever after CRLF: after a bare LF or bare CR a "." is not at a line start.
//   <LF>.<LF>, <CR>.<CR>, <LF>.<CR><LF>, <CR><LF>.<LF>, <CR><LF>.<CR>, <CR>.<CR><LF>
//   and NUL never end the data.
// - A leading "." of a line is removed whatever follows ("..x" → ".x", ".x" → "x").
// - Errors: a bare LF (kBareLf), a CR not followed by LF (kBareCr, detected at the
//   next octet), a NUL (kNul), a text line over max_line octets as sent, CRLF and
//   any stuffing dot included (kLineTooLong), more than max_message octets of
//   message (kTooBig). The first error wins and is sticky; from then on nothing
//   more is written to the sink and the decoder only looks for the real end of data,
//   so the session answers 5xx at kEnd without losing sync. The sink holds exactly
//   the message octets before the octet at which the error was detected (any split
//   gives the same); the session discards its spool when error() != kNone.
// - Fatal: when more than max_discard octets arrive after the first error without
//   the end of data, feed() returns kFatal (reply 421 / 554 and close; the client is
//   not talking SMTP). After kFatal or kEnd, feed() consumes nothing until reset().
// - feed() returns kEnd with `consumed` right after the final LF; the rest of the
//   input is the next command (pipelining).
//
// BdatDecoder — counts exactly n octets per chunk (no dot handling, no end marker).
// - startMessage() at MAIL (or the first BDAT) clears totals and the error;
//   startChunk(n, last) for each BDAT command; feed() consumes at most the octets
//   left in the chunk and returns kChunk (or kLast for the LAST chunk) when done.
// - Line-ending policy (unless binary, i.e. BODY=BINARYMIME): bare LF, bare CR and
//   NUL are errors as for DATA; a CRLF may straddle two chunks; a CR ending the LAST
//   chunk is a bare CR. max_line (0 = unchecked, the default) applies to text lines.
// - max_message bounds the sum of all chunks (kTooBig). Errors are sticky for the
//   message and never change how many octets are consumed.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::codec {

class SmtpBodySink {
 public:
  virtual void write(std::string_view bytes) noexcept = 0;

 protected:
  ~SmtpBodySink() = default;
};

// Appends to a std::string (tests, small spools); the decoder's max_message bounds it.
class SmtpStringSink final : public SmtpBodySink {
 public:
  explicit SmtpStringSink(std::string* out) noexcept : out_(out) {}
  void write(std::string_view bytes) noexcept override { out_->append(bytes); }

 private:
  std::string* out_;
};

enum class SmtpDataError { kNone, kBareLf, kBareCr, kNul, kLineTooLong, kTooBig };

struct SmtpDataReply {
  uint16_t code;
  std::string_view enhanced;
  std::string_view text;
};
// Suggested final reply for an error: framing and long lines 554 5.5.2, too big 552 5.3.4.
SmtpDataReply smtpDataErrorReply(SmtpDataError e) noexcept;
// Bare LF, bare CR or NUL: a possible smuggling attempt, worth a log line.
bool isSmtpDataFramingError(SmtpDataError e) noexcept;

struct SmtpDataLimits {
  uint32_t max_line = 1000;                  // text line incl. CRLF (RFC 5321 §4.5.3.1.6); 0 = unchecked
  uint64_t max_message = uint64_t{64} << 20;  // message octets after unstuffing
  uint64_t max_discard = uint64_t{64} << 20;  // octets after the first error before kFatal
};

enum class SmtpDataStatus {
  kNeedMore,  // all input consumed
  kEnd,       // <CRLF>.<CRLF> seen; check error()
  kFatal,     // no end of data within max_discard after an error
};

struct SmtpDataFeed {
  SmtpDataStatus status;
  size_t consumed;
};

class SmtpDataDecoder {
 public:
  explicit SmtpDataDecoder(SmtpDataLimits limits = {}) noexcept;
  SmtpDataFeed feed(std::string_view input, SmtpBodySink& sink) noexcept;
  SmtpDataError error() const noexcept { return err_; }
  // Offset in the raw DATA stream of the octet at which error() was detected.
  uint64_t errorOffset() const noexcept { return err_offset_; }
  uint64_t messageSize() const noexcept { return size_; }  // octets accepted (before any error)
  uint64_t rawOctets() const noexcept { return raw_; }     // octets consumed so far
  // Ready for the next message (limits kept).
  void reset() noexcept;
  void setMaxMessage(uint64_t max) noexcept { limits_.max_message = max; }

 private:
  enum class State : uint8_t { kLineStart, kText, kCr, kDot, kDotCr, kDone, kFatal };
  void fail(SmtpDataError e, std::string_view in, size_t i, size_t* run, SmtpBodySink& sink) noexcept;

  SmtpDataLimits limits_;
  State state_ = State::kLineStart;
  SmtpDataError err_ = SmtpDataError::kNone;
  uint64_t err_offset_ = 0;
  uint64_t raw_ = 0;
  uint64_t size_ = 0;
  uint64_t line_ = 0;
  uint64_t discarded_ = 0;
};

struct BdatLimits {
  uint32_t max_line = 0;                      // 0 = unchecked
  uint64_t max_message = uint64_t{64} << 20;  // sum of all chunks
};

enum class BdatStatus {
  kNeedMore,  // all input consumed, the chunk is not complete
  kChunk,     // this chunk is complete (not LAST): answer it
  kLast,      // the LAST chunk is complete: the message is complete; check error()
};

struct BdatFeed {
  BdatStatus status;
  size_t consumed;
};

class BdatDecoder {
 public:
  explicit BdatDecoder(BdatLimits limits = {}) noexcept;
  // New message. binary: BODY=BINARYMIME, no line-ending, NUL or line-length checks.
  void startMessage(bool binary = false) noexcept;
  void startChunk(uint64_t size, bool last) noexcept;
  // Consumes at most remaining() octets. A zero-size chunk completes on the first call.
  BdatFeed feed(std::string_view input, SmtpBodySink& sink) noexcept;
  uint64_t remaining() const noexcept { return left_; }
  SmtpDataError error() const noexcept { return err_; }
  uint64_t errorOffset() const noexcept { return err_offset_; }  // offset in the message's raw chunk octets
  uint64_t messageSize() const noexcept { return total_; }       // octets of all chunks so far
  void setMaxMessage(uint64_t max) noexcept { limits_.max_message = max; }

 private:
  void fail(SmtpDataError e, uint64_t offset) noexcept;

  BdatLimits limits_;
  uint64_t left_ = 0;
  uint64_t total_ = 0;
  uint64_t line_ = 0;
  uint64_t err_offset_ = 0;
  SmtpDataError err_ = SmtpDataError::kNone;
  bool last_ = false;
  bool binary_ = false;
  bool cr_ = false;  // the previous octet was CR
  bool in_chunk_ = false;
};

}  // namespace mailgate::codec
