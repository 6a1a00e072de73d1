#include "gateway/codec/imap_literal_tracker.h"

#include <algorithm>

namespace mailgate::codec {

namespace {
bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char c = a[i];
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c != b[i]) return false;
  }
  return true;
}
}  // namespace

void LiteralTail::push(char c) noexcept {
  switch (c) {
    case '{':
      state_ = State::kDigits;
      digits_ = false;
      plus_ = false;
      n_ = 0;
      return;
    case '+':
      state_ = state_ == State::kDigits && digits_ ? State::kPlus : State::kNone;
      if (state_ == State::kPlus) plus_ = true;
      return;
    case '}':
      state_ =
          (state_ == State::kDigits && digits_) || state_ == State::kPlus ? State::kClosed : State::kNone;
      return;
    case '\r':
      state_ = state_ == State::kClosed ? State::kClosedCr : State::kNone;
      return;
    default:
      if (c >= '0' && c <= '9' && state_ == State::kDigits) {
        digits_ = true;
        const auto d = static_cast<uint64_t>(c - '0');
        n_ = n_ > (ImapAppendGuard::kHuge - d) / 10 ? ImapAppendGuard::kHuge : n_ * 10 + d;
        return;
      }
      state_ = State::kNone;
      return;
  }
}

ImapAppendGuard::Step ImapAppendGuard::refuse(Reason why, size_t consumed, bool close) noexcept {
  reason_ = why;
  refused_size_ = why == Reason::kTooBig ? tail_.size() : 0;
  close_ = close;
  held_.clear();
  release_ = false;
  dropping_ = true;
  state_ = close ? State::kDead : State::kLine;  // the rest of the line is dropped
  return {Action::kRefused, consumed, {}};
}

void ImapAppendGuard::commandKnown() noexcept {
  const std::string_view cmd = std::string_view(held_).substr(cmd_start_);
  append_ = lim_.append_limit > 0 && iequals(cmd, "APPEND");
  compress_ = iequals(cmd, "COMPRESS");
  if (append_) tag_.assign(held_, 0, tag_len_);
}

// The LF of a line is at in[consumed - 1] (already in held_ when holding).
ImapAppendGuard::Step ImapAppendGuard::endOfLine(size_t consumed) noexcept {
  const bool literal = tail_.literal();
  if (dropping_) {
    // A refused command: the client has our reply. It sends a non-synchronizing
    // literal anyway (swallowed when small), never a synchronizing one.
    held_.clear();
    if (literal && tail_.nonSync()) {
      if (tail_.size() > lim_.max_swallow) {
        state_ = State::kDead;
        return {Action::kAbort, consumed, {}};
      }
      literal_left_ = tail_.size();
      state_ = literal_left_ ? State::kLiteral : State::kLine;
      tail_.reset();
      return {Action::kNeedMore, consumed, {}};
    }
    dropping_ = false;
    append_ = false;
    state_ = State::kLineStart;
    tail_.reset();
    return {Action::kNeedMore, consumed, {}};
  }
  if (append_ && literal && tail_.size() > lim_.append_limit) {
    const bool sync = !tail_.nonSync();
    // A synchronizing literal of a command nothing of which reached the node: the
    // client will not send it; the session goes on. Otherwise the octets follow.
    if (sync && !forwarded_) {
      Step s = refuse(Reason::kTooBig, consumed, false);
      dropping_ = false;
      append_ = false;
      state_ = State::kLineStart;
      tail_.reset();
      return s;
    }
    if (!sync && !forwarded_ && tail_.size() <= lim_.max_swallow) {
      Step s = refuse(Reason::kTooBig, consumed, false);
      literal_left_ = tail_.size();
      state_ = literal_left_ ? State::kLiteral : State::kLine;
      tail_.reset();
      return s;
    }
    return refuse(Reason::kTooBig, consumed, true);
  }
  if (literal) {
    literal_left_ = tail_.size();
    state_ = literal_left_ ? State::kLiteral : State::kLine;
  } else {
    state_ = compress_ ? State::kPassthrough : State::kLineStart;
    append_ = false;
    compress_ = false;
  }
  tail_.reset();
  if (!held_.empty()) {
    if (append_) forwarded_ = true;
    release_ = true;
    return {Action::kForward, consumed, held_};
  }
  return {Action::kNeedMore, consumed, {}};
}

ImapAppendGuard::Step ImapAppendGuard::feed(std::string_view in) noexcept {
  if (release_) {
    held_.clear();
    release_ = false;
  }
  if (in.empty()) return {Action::kNeedMore, 0, {}};
  switch (state_) {
    case State::kDead:
      return {Action::kNeedMore, in.size(), {}};
    case State::kPassthrough:
      return {Action::kForward, in.size(), in};
    case State::kLiteral: {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(literal_left_, in.size()));
      literal_left_ -= n;
      if (literal_left_ == 0) state_ = State::kLine;
      if (dropping_) return {Action::kNeedMore, n, {}};
      return {Action::kForward, n, in.substr(0, n)};
    }
    case State::kLineStart:
      if (lim_.append_limit == 0) return {Action::kForward, in.size(), in};  // nothing to watch
      append_ = compress_ = forwarded_ = dropping_ = false;
      tail_.reset();
      tag_len_ = cmd_start_ = 0;
      state_ = State::kTag;
      [[fallthrough]];
    case State::kTag:
    case State::kCommand: {
      // Held until the command word is known.
      for (size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        const bool end = c == '\n';
        if (held_.size() + i >= lim_.max_line) {
          tag_.assign("*");
          return refuse(Reason::kLineTooLong, i, false);
        }
        if (!end) tail_.push(c);
        if (state_ == State::kTag) {
          if (c == ' ') {
            tag_len_ = held_.size() + i;  // positions in held_ once in[0, i] is appended
            cmd_start_ = tag_len_ + 1;
            state_ = State::kCommand;
          } else if (end || c == '\r') {
            // No command word: "DONE", an empty line, a continuation.
            held_.append(in.substr(0, i + 1));
            if (end) return endOfLine(i + 1);
            state_ = State::kLine;
            release_ = true;
            return {Action::kForward, i + 1, held_};
          }
          continue;
        }
        if (c == ' ' || c == '\r' || end) {
          held_.append(in.substr(0, i));
          commandKnown();
          held_.push_back(c);
          if (end) return endOfLine(i + 1);
          state_ = State::kLine;
          if (append_) return {Action::kNeedMore, i + 1, {}};  // held to the line's end
          release_ = true;
          return {Action::kForward, i + 1, held_};
        }
      }
      held_.append(in);
      return {Action::kNeedMore, in.size(), {}};
    }
    case State::kLine: {
      const bool hold = append_ && !dropping_;
      for (size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '\n') {
          if (hold) held_.append(in.substr(0, i + 1));
          if (!hold && !dropping_) {
            // Forward the line's rest first; the LF's consequences on the next feed.
            const Step s = endOfLine(i + 1);
            if (s.action == Action::kNeedMore) return {Action::kForward, i + 1, in.substr(0, i + 1)};
            return s;
          }
          return endOfLine(i + 1);
        }
        tail_.push(c);
        if (hold && held_.size() + i + 1 > lim_.max_line)
          return refuse(Reason::kLineTooLong, i + 1, forwarded_);
      }
      if (hold) {
        held_.append(in);
        return {Action::kNeedMore, in.size(), {}};
      }
      if (dropping_) return {Action::kNeedMore, in.size(), {}};
      return {Action::kForward, in.size(), in};
    }
  }
  return {Action::kNeedMore, in.size(), {}};
}

void ImapResponseFramer::feed(std::string_view in) noexcept {
  while (!in.empty()) {
    if (literal_left_) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(literal_left_, in.size()));
      literal_left_ -= n;
      in.remove_prefix(n);
      continue;
    }
    const size_t nl = in.find('\n');
    const std::string_view part = in.substr(0, nl == std::string_view::npos ? in.size() : nl);
    for (char c : part) tail_.push(c);
    if (nl == std::string_view::npos) {
      mid_line_ = true;
      return;
    }
    in.remove_prefix(nl + 1);
    if (tail_.literal()) {
      literal_left_ = tail_.size();
      mid_line_ = true;  // the response goes on after its literal
    } else {
      mid_line_ = false;
    }
    tail_.reset();
  }
}

}  // namespace mailgate::codec
