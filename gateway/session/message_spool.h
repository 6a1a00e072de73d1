#pragma once
// The body of one SMTP message while it waits for a storage node: in memory up to
// a bound, then in an anonymous temporary file (O_TMPFILE: nothing is left behind
// if the process dies). The file is written in 64 KiB batches and read back in
// chunks while the message streams to the node, so a large message costs the
// session at most memory_limit + one chunk of memory (+ the writes in flight).
//
// Two modes. Synchronous (the default; content hooks reading on a worker, tests):
// plain write/pread. Asynchronous (setAsync(), what a session uses): the file is
// opened, written and read on a spool thread, never on the reactor; answers come
// back on the owner's thread through Async::post, and an answer for content that
// was cleared meanwhile is dropped. A memory-only spool never leaves the owner's
// thread. A write error (disk full) marks the spool failed; the message is refused
// at its end.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "gateway/codec/smtp_data.h"
#include "gateway/session/deliverable_body.h"

namespace mailgate::session {

class MessageSpool final : public codec::SmtpBodySink, public DeliverableBody {
 public:
  // Writes not yet on disk above which the owner stops reading its client.
  static constexpr uint64_t kMaxInflight = 256 * 1024;

  struct Async {
    // Runs job on the spool thread; false when its queue is full.
    std::function<bool(std::function<void()>)> submit;
    // Runs fn later on the owner's thread (or never, if the owner is gone).
    std::function<void(std::function<void()>)> post;
  };

  MessageSpool(uint64_t memory_limit, std::string dir) : limit_(memory_limit), dir_(std::move(dir)) {}
  ~MessageSpool();
  MessageSpool(const MessageSpool&) = delete;
  MessageSpool& operator=(const MessageSpool&) = delete;

  // From now on file work runs through `io`. Call before the first write.
  void setAsync(Async io) { async_ = std::move(io); }
  bool async() const { return static_cast<bool>(async_.submit); }

  void write(std::string_view bytes) noexcept override;
  // Synchronous mode: everything written so far is in memory or on disk.
  bool flush() noexcept;
  // Both modes: true when everything written so far is in memory or on disk (or the
  // spool failed); otherwise the rest goes to the spool thread and `done` runs on
  // the owner's thread once it is written. Look at failed() then.
  bool flushAsync(std::function<void()> done);
  // Asynchronous mode: more than kMaxInflight octets wait for the spool thread. The
  // owner pauses its client; `drained` (set once) runs when they fall below again.
  bool congested() const { return inflight_ > kMaxInflight; }
  void onDrained(std::function<void()> drained) { on_drained_ = std::move(drained); }
  // Drops the content, closes the file, releases the memory; answers still to come
  // for the old content are dropped.
  void clear() noexcept;

  uint64_t size() const override { return size_; }
  bool inFile() const override { return file_ != nullptr; }
  bool failed() const { return !error_.empty(); }
  // The write or read failed for lack of room (ENOSPC, EDQUOT), not for another reason.
  bool noSpace() const { return no_space_; }
  const std::string& error() const override { return error_; }
  // When !inFile(): the whole message.
  std::string_view memory() const override { return mem_; }
  // Reads up to n octets at off into *out (replacing its content); false on error.
  // Synchronous: for memory spools, and for the content hooks on a worker thread.
  bool read(uint64_t off, size_t n, std::string* out) noexcept;

  using Fetch = DeliverableBody::Fetch;
  // The owner's read: n octets at off into *out. A memory spool (or synchronous mode)
  // answers kDone or kError at once. Otherwise the first call answers kPending and
  // has the spool thread read them; `ready` runs on the owner's thread when they are
  // in, and the next call with the same off and n answers kDone (or kError).
  Fetch fetch(uint64_t off, size_t n, std::string* out, std::function<void()> ready) override;

  // The start of the message (at least its first kHead octets, or all of it), for
  // the header fields the logs name (Message-ID).
  static constexpr size_t kHead = 16 * 1024;
  std::string_view head() const { return file_ ? std::string_view(head_) : std::string_view(mem_); }

  // The last octets written (for the end-of-data rule), at most 2.
  std::string_view tail() const { return std::string_view(tail_, tail_len_); }

 private:
  // The file, shared with the jobs on the spool thread so that it stays open until
  // the last of them is done even if the spool is cleared meanwhile.
  struct File;
  bool openSync() noexcept;
  bool writeSync(std::string_view bytes) noexcept;
  void submitWrite(std::string batch);
  void writeDone(const std::shared_ptr<File>& file, size_t n, const std::string& err, bool no_space);
  void fail(std::string err, bool no_space);
  void readDone(const std::shared_ptr<File>& file, bool ok, std::string data, const std::string& err);

  uint64_t limit_;
  std::string dir_;
  Async async_;
  std::string mem_;  // the message (memory mode) or the batch not yet written (file mode)
  std::string head_;  // file mode: the first kHead octets
  std::shared_ptr<File> file_;
  uint64_t size_ = 0;
  uint64_t file_size_ = 0;  // octets written or handed to the spool thread
  uint64_t inflight_ = 0;   // of those, octets the spool thread has not written yet
  std::function<void()> flush_done_;
  std::function<void()> on_drained_;
  std::string error_;
  bool no_space_ = false;
  // The asynchronous read: one at a time, its answer held until fetched.
  bool read_inflight_ = false;
  bool read_held_ = false;
  bool read_ok_ = false;
  uint64_t read_off_ = 0;
  size_t read_n_ = 0;
  std::string read_data_;
  std::function<void()> read_ready_;
  char tail_[2] = {0, 0};
  size_t tail_len_ = 0;
};

}  // namespace mailgate::session
