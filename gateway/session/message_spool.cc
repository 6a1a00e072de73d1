#include "gateway/session/message_spool.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace mailgate::session {

namespace {
constexpr size_t kBatch = 64 * 1024;
}

void MessageSpool::clear() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  std::string().swap(mem_);
  size_ = 0;
  file_size_ = 0;
  error_.clear();
  tail_len_ = 0;
}

bool MessageSpool::openFile() noexcept {
  const std::string& dir = dir_.empty() ? std::string("/var/tmp") : dir_;
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd_ < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    // File systems without O_TMPFILE: a named file, unlinked at once.
    std::string path = dir + "/mailgate-spool.XXXXXX";
    fd_ = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd_ >= 0) ::unlink(path.c_str());
  }
  if (fd_ < 0) {
    error_ = "cannot create a spool file in " + dir + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

bool MessageSpool::writeAll(std::string_view bytes) noexcept {
  while (!bytes.empty()) {
    ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(file_size_));
    if (n < 0) {
      if (errno == EINTR) continue;
      error_ = std::string("spool file write failed: ") + std::strerror(errno);
      return false;
    }
    file_size_ += static_cast<uint64_t>(n);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void MessageSpool::write(std::string_view bytes) noexcept {
  if (bytes.empty()) return;
  if (bytes.size() >= 2) {
    tail_[0] = bytes[bytes.size() - 2];
    tail_[1] = bytes[bytes.size() - 1];
    tail_len_ = 2;
  } else if (tail_len_ == 0) {
    tail_[0] = bytes[0];
    tail_len_ = 1;
  } else {
    if (tail_len_ == 2) tail_[0] = tail_[1];
    tail_[1] = bytes[0];
    tail_len_ = 2;
  }
  size_ += bytes.size();
  if (failed()) return;  // the message is refused at its end; count, keep nothing
  if (fd_ < 0 && size_ <= limit_) {
    mem_.append(bytes);
    return;
  }
  if (fd_ < 0) {
    if (!openFile()) {
      std::string().swap(mem_);
      return;
    }
  }
  mem_.append(bytes);
  if (mem_.size() >= kBatch) {
    if (!writeAll(mem_)) {
      std::string().swap(mem_);
      return;
    }
    mem_.clear();
    if (mem_.capacity() > 2 * kBatch) std::string().swap(mem_);
  }
}

bool MessageSpool::flush() noexcept {
  if (failed()) return false;
  if (fd_ < 0 || mem_.empty()) return true;
  bool ok = writeAll(mem_);
  std::string().swap(mem_);
  return ok;
}

bool MessageSpool::read(uint64_t off, size_t n, std::string* out) noexcept {
  out->clear();
  if (fd_ < 0) {
    if (off < mem_.size()) out->assign(mem_, static_cast<size_t>(off), n);
    return true;
  }
  out->resize(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd_, out->data() + got, n - got, static_cast<off_t>(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      error_ = std::string("spool file read failed: ") + std::strerror(errno);
      out->clear();
      return false;
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  out->resize(got);
  return true;
}

}  // namespace mailgate::session
