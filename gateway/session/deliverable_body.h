#pragma once
// The message a delivery streams to its storage node (SmtpNodeClient): the session's
// spool (MessageSpool), or the copy a data-stage scanner replaced it with
// (filters::Verdict::replacement, through ReplacementBody). Read on the owner's
// thread: a body in memory at once, a body in a file in chunks that another thread
// reads (fetch), so the reactor never blocks and the message is never held whole.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace mailgate::session {

class DeliverableBody {
 public:
  virtual ~DeliverableBody() = default;

  virtual uint64_t size() const = 0;
  // false: memory() holds the whole message; true: read it with fetch().
  virtual bool inFile() const = 0;
  virtual std::string_view memory() const = 0;

  enum class Fetch { kDone, kPending, kError };
  // n octets at off into *out. kPending: `ready` runs on the owner's thread once they
  // are in, and the next call with the same off and n answers kDone (or kError).
  virtual Fetch fetch(uint64_t off, size_t n, std::string* out, std::function<void()> ready) = 0;
  // What failed, after kError.
  virtual const std::string& error() const = 0;
};

}  // namespace mailgate::session
