#pragma once
// Read access to a spooled message (Received: header included, unstuffed, CRLF), as
// the data-stage filters and scanners see it. Shared: it outlives a session that
// closes while a scanner still reads it.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>

namespace mailgate::filters {

class MessageBody {
 public:
  virtual ~MessageBody() = default;
  virtual uint64_t size() const = 0;
  // Up to n octets at off into *out (replacing it); false on an I/O error.
  virtual bool read(uint64_t off, size_t n, std::string* out) const = 0;
};

// A message held in memory (a DSN the gateway made, a test's message).
class StringBody final : public MessageBody {
 public:
  explicit StringBody(std::string s) : s_(std::move(s)) {}
  uint64_t size() const override { return s_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    if (off > s_.size()) return false;
    out->assign(s_, static_cast<size_t>(off), n);
    return true;
  }

 private:
  std::string s_;
};

// A message in a file the body owns (closed with it): `size` octets from `start`,
// read by offset (pread: concurrent readers need no lock).
class FileBody final : public MessageBody {
 public:
  FileBody(int fd, uint64_t size, uint64_t start = 0) : fd_(fd), start_(start), size_(size) {}
  ~FileBody() override { ::close(fd_); }
  FileBody(const FileBody&) = delete;
  FileBody& operator=(const FileBody&) = delete;
  uint64_t size() const override { return size_; }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    out->clear();
    if (off >= size_) return true;
    n = static_cast<size_t>(std::min<uint64_t>(n, size_ - off));
    out->resize(n);
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::pread(fd_, out->data() + got, n - got, static_cast<off_t>(start_ + off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        out->clear();
        return false;
      }
      got += static_cast<size_t>(r);
    }
    return true;
  }

 private:
  int fd_;
  uint64_t start_, size_;
};

}  // namespace mailgate::filters
