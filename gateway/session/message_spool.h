#pragma once
// The body of one SMTP message while it waits for a storage node: in memory up to
// a bound, then in an anonymous temporary file (O_TMPFILE: nothing is left behind
// if the process dies). The file is written in 64 KiB batches and read back in
// chunks while the message streams to the node, so a large message costs the
// session at most memory_limit + one chunk of memory.
//
// File I/O is plain write/pread on the page cache of a local file system; a write
// error (disk full) marks the spool failed and the client gets 452 4.3.1.
#include <cstdint>
#include <string>
#include <string_view>

#include "gateway/codec/smtp_data.h"

namespace mailgate::session {

class MessageSpool final : public codec::SmtpBodySink {
 public:
  MessageSpool(uint64_t memory_limit, std::string dir) : limit_(memory_limit), dir_(std::move(dir)) {}
  ~MessageSpool() { clear(); }
  MessageSpool(const MessageSpool&) = delete;
  MessageSpool& operator=(const MessageSpool&) = delete;

  void write(std::string_view bytes) noexcept override;
  // Everything written so far is in memory or on disk: call before reading.
  bool flush() noexcept;
  // Drops the content, closes the file, releases the memory.
  void clear() noexcept;

  uint64_t size() const { return size_; }
  bool inFile() const { return fd_ >= 0; }
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  // When !inFile(): the whole message.
  std::string_view memory() const { return mem_; }
  // Reads up to n octets at off into *out (replacing its content); false on error.
  bool read(uint64_t off, size_t n, std::string* out) noexcept;
  // The last octets written (for the end-of-data rule), at most 2.
  std::string_view tail() const { return std::string_view(tail_, tail_len_); }

 private:
  bool openFile() noexcept;
  bool writeAll(std::string_view bytes) noexcept;

  uint64_t limit_;
  std::string dir_;
  std::string mem_;  // the message (memory mode) or the batch not yet written (file mode)
  int fd_ = -1;
  uint64_t size_ = 0;
  uint64_t file_size_ = 0;
  std::string error_;
  char tail_[2] = {0, 0};
  size_t tail_len_ = 0;
};

}  // namespace mailgate::session
