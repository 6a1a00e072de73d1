#include "gateway/codec/smtp_data.h"

#include <algorithm>

namespace mailgate::codec {

SmtpDataReply smtpDataErrorReply(SmtpDataError e) noexcept {
  switch (e) {
    case SmtpDataError::kNone:
      return {250, "2.0.0", "OK"};
    case SmtpDataError::kBareLf:
      return {554, "5.5.2", "Message contains bare LF"};
    case SmtpDataError::kBareCr:
      return {554, "5.5.2", "Message contains bare CR"};
    case SmtpDataError::kNul:
      return {554, "5.5.2", "Message contains NUL"};
    case SmtpDataError::kLineTooLong:
      return {554, "5.5.2", "Message line too long"};
    case SmtpDataError::kTooBig:
      return {552, "5.3.4", "Message size exceeds fixed maximum message size"};
  }
  return {554, "5.5.2", "Bad message"};
}

bool isSmtpDataFramingError(SmtpDataError e) noexcept {
  switch (e) {
    case SmtpDataError::kBareLf:
    case SmtpDataError::kBareCr:
    case SmtpDataError::kNul:
      return true;
    case SmtpDataError::kNone:
    case SmtpDataError::kLineTooLong:
    case SmtpDataError::kTooBig:
      return false;
  }
  return false;
}

// ---------------------------------------------------------------------------------
// DATA

SmtpDataDecoder::SmtpDataDecoder(SmtpDataLimits limits) noexcept : limits_(limits) { reset(); }

void SmtpDataDecoder::reset() noexcept {
  state_ = State::kLineStart;
  err_ = SmtpDataError::kNone;
  err_offset_ = 0;
  raw_ = 0;
  size_ = 0;
  line_ = 0;
  discarded_ = 0;
}

// Records the first error, writing out the octets of the run that precede input[i].
void SmtpDataDecoder::fail(SmtpDataError e, std::string_view in, size_t i, size_t* run,
                           SmtpBodySink& sink) noexcept {
  if (err_ != SmtpDataError::kNone) return;
  if (i > *run) sink.write(in.substr(*run, i - *run));
  *run = i;
  err_ = e;
  err_offset_ = raw_ - 1;  // raw_ already counts input[i]
}

SmtpDataFeed SmtpDataDecoder::feed(std::string_view in, SmtpBodySink& sink) noexcept {
  switch (state_) {
    case State::kDone:
      return {SmtpDataStatus::kEnd, 0};
    case State::kFatal:
      return {SmtpDataStatus::kFatal, 0};
    case State::kLineStart:
    case State::kText:
    case State::kCr:
    case State::kDot:
    case State::kDotCr:
      break;
  }
  const size_t n = in.size();
  size_t run = 0;  // start of the octets not yet written to the sink
  // Writes the pending run up to (excluding) `end` and skips input[end].
  auto skip = [&](size_t end) {
    if (err_ == SmtpDataError::kNone && end > run) sink.write(in.substr(run, end - run));
    run = end + 1;
  };
  size_t i = 0;
  while (i < n) {
    // Fast path: plain text inside a line, below every limit.
    if (state_ == State::kText && err_ == SmtpDataError::kNone) {
      size_t j = i;
      while (j < n && in[j] != '\r' && in[j] != '\n' && in[j] != '\0') ++j;
      uint64_t take = j - i;
      if (limits_.max_line != 0) take = std::min<uint64_t>(take, limits_.max_line - line_);
      take = std::min<uint64_t>(take, limits_.max_message - size_);
      raw_ += take;
      line_ += take;
      size_ += take;
      i += static_cast<size_t>(take);
      if (i >= n) break;
    }
    const char c = in[i];
    ++raw_;
    if (err_ != SmtpDataError::kNone && ++discarded_ > limits_.max_discard) {
      state_ = State::kFatal;
      return {SmtpDataStatus::kFatal, i + 1};
    }
    ++line_;
    if (limits_.max_line != 0 && line_ > limits_.max_line) fail(SmtpDataError::kLineTooLong, in, i, &run, sink);
    bool out = true;
    switch (state_) {
      case State::kLineStart:
        if (c == '.') {
          out = false;
          state_ = State::kDot;
        } else if (c == '\r') {
          state_ = State::kCr;
        } else if (c == '\n') {
          fail(SmtpDataError::kBareLf, in, i, &run, sink);
          state_ = State::kText;
        } else {
          if (c == '\0') fail(SmtpDataError::kNul, in, i, &run, sink);
          state_ = State::kText;
        }
        break;
      case State::kText:
        if (c == '\r') {
          state_ = State::kCr;
        } else if (c == '\n') {
          fail(SmtpDataError::kBareLf, in, i, &run, sink);
        } else if (c == '\0') {
          fail(SmtpDataError::kNul, in, i, &run, sink);
        }
        break;
      case State::kCr:
        if (c == '\n') {
          state_ = State::kLineStart;
          line_ = 0;
        } else {
          fail(SmtpDataError::kBareCr, in, i, &run, sink);  // the previous CR
          state_ = c == '\r' ? State::kCr : State::kText;
        }
        break;
      case State::kDot:
        if (c == '\r') {
          out = false;  // maybe the end: written later only if it is not
          state_ = State::kDotCr;
        } else if (c == '\n') {
          fail(SmtpDataError::kBareLf, in, i, &run, sink);  // <CRLF>.<LF>
          state_ = State::kText;
        } else {
          if (c == '\0') fail(SmtpDataError::kNul, in, i, &run, sink);
          state_ = State::kText;  // dot-stuffed line: the dot was dropped
        }
        break;
      case State::kDotCr:
        if (c == '\n') {
          skip(i);
          state_ = State::kDone;
          return {SmtpDataStatus::kEnd, i + 1};
        }
        fail(SmtpDataError::kBareCr, in, i, &run, sink);  // <CRLF>.<CR>x
        state_ = c == '\r' ? State::kCr : State::kText;
        break;
      case State::kDone:
      case State::kFatal:
        break;  // not reached: handled on entry
    }
    if (out) {
      if (err_ == SmtpDataError::kNone && ++size_ > limits_.max_message) {
        fail(SmtpDataError::kTooBig, in, i, &run, sink);
      }
    } else {
      skip(i);
    }
    ++i;
  }
  if (err_ == SmtpDataError::kNone && n > run) sink.write(in.substr(run, n - run));
  return {SmtpDataStatus::kNeedMore, n};
}

// ---------------------------------------------------------------------------------
// BDAT

BdatDecoder::BdatDecoder(BdatLimits limits) noexcept : limits_(limits) { startMessage(false); }

void BdatDecoder::startMessage(bool binary) noexcept {
  left_ = 0;
  total_ = 0;
  line_ = 0;
  err_offset_ = 0;
  err_ = SmtpDataError::kNone;
  last_ = false;
  binary_ = binary;
  cr_ = false;
  in_chunk_ = false;
}

void BdatDecoder::startChunk(uint64_t size, bool last) noexcept {
  left_ = size;
  last_ = last;
  in_chunk_ = true;
}

void BdatDecoder::fail(SmtpDataError e, uint64_t offset) noexcept {
  if (err_ != SmtpDataError::kNone) return;
  err_ = e;
  err_offset_ = offset;
}

BdatFeed BdatDecoder::feed(std::string_view in, SmtpBodySink& sink) noexcept {
  if (!in_chunk_) return {BdatStatus::kNeedMore, 0};
  const size_t take = static_cast<size_t>(std::min<uint64_t>(left_, in.size()));
  size_t good = take;  // octets written to the sink
  const bool was_ok = err_ == SmtpDataError::kNone;
  for (size_t i = 0; i < take; ++i) {
    const char c = in[i];
    const uint64_t off = total_ + i;
    if (off >= limits_.max_message) fail(SmtpDataError::kTooBig, off);
    if (!binary_) {
      ++line_;
      if (limits_.max_line != 0 && line_ > limits_.max_line) fail(SmtpDataError::kLineTooLong, off);
      if (cr_) {
        if (c == '\n') {
          line_ = 0;
        } else {
          fail(SmtpDataError::kBareCr, off);
        }
        cr_ = c == '\r';
      } else if (c == '\r') {
        cr_ = true;
      } else if (c == '\n') {
        fail(SmtpDataError::kBareLf, off);
      }
      if (c == '\0') fail(SmtpDataError::kNul, off);
    }
    if (was_ok && err_ != SmtpDataError::kNone && good == take) good = i;
    if (err_ != SmtpDataError::kNone && binary_) break;  // nothing more to check
  }
  if (was_ok && good > 0) sink.write(in.substr(0, good));
  total_ += take;
  left_ -= take;
  if (left_ != 0) return {BdatStatus::kNeedMore, take};
  in_chunk_ = false;
  if (!last_) return {BdatStatus::kChunk, take};
  if (cr_ && !binary_) fail(SmtpDataError::kBareCr, total_);
  cr_ = false;
  return {BdatStatus::kLast, take};
}

}  // namespace mailgate::codec
