#include "gateway/session/message_spool.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace mailgate::session {

namespace {
constexpr size_t kBatch = 64 * 1024;

// Opens an anonymous file in dir; -1 and *err on failure.
int openSpoolFile(const std::string& dir_in, std::string* err) {
  const std::string dir = dir_in.empty() ? std::string("/var/tmp") : dir_in;
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    // File systems without O_TMPFILE: a named file, unlinked at once.
    std::string path = dir + "/mailgate-spool.XXXXXX";
    fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(path.c_str());
  }
  if (fd < 0) *err = "cannot create a spool file in " + dir + ": " + std::strerror(errno);
  return fd;
}

bool writeAt(int fd, std::string_view bytes, uint64_t off, std::string* err, bool* no_space) {
  while (!bytes.empty()) {
    ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      *no_space = errno == ENOSPC || errno == EDQUOT;
      *err = std::string("spool file write failed: ") + std::strerror(errno);
      return false;
    }
    off += static_cast<uint64_t>(n);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool readAt(int fd, uint64_t off, size_t n, std::string* out, std::string* err) {
  out->resize(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, out->data() + got, n - got, static_cast<off_t>(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      *err = std::string("spool file read failed: ") + std::strerror(errno);
      out->clear();
      return false;
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  out->resize(got);
  return true;
}
}  // namespace

struct MessageSpool::File {
  int fd = -1;
  std::string open_error;  // the spool thread could not make the file
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (fd >= 0) ::close(fd);
  }
};

MessageSpool::~MessageSpool() {
  on_drained_ = nullptr;  // the owner may be gone
  clear();
}

void MessageSpool::clear() noexcept {
  const bool was_congested = congested();
  file_.reset();  // jobs still running keep the file open until they end
  std::string().swap(mem_);
  std::string().swap(head_);
  size_ = 0;
  file_size_ = 0;
  inflight_ = 0;
  flush_done_ = nullptr;
  error_.clear();
  no_space_ = false;
  read_inflight_ = read_held_ = read_ok_ = false;
  read_ready_ = nullptr;
  std::string().swap(read_data_);
  tail_len_ = 0;
  if (was_congested && on_drained_) on_drained_();  // the owner paused its client for writes now void
}

void MessageSpool::fail(std::string err, bool no_space) {
  if (error_.empty()) {
    error_ = std::move(err);
    no_space_ = no_space;
  }
  std::string().swap(mem_);
}

bool MessageSpool::openSync() noexcept {
  auto f = std::make_shared<File>();
  std::string err;
  f->fd = openSpoolFile(dir_, &err);
  if (f->fd < 0) {
    fail(std::move(err), false);
    return false;
  }
  file_ = std::move(f);
  return true;
}

bool MessageSpool::writeSync(std::string_view bytes) noexcept {
  std::string err;
  bool no_space = false;
  if (!writeAt(file_->fd, bytes, file_size_, &err, &no_space)) {
    fail(std::move(err), no_space);
    return false;
  }
  file_size_ += bytes.size();
  return true;
}

void MessageSpool::submitWrite(std::string batch) {
  std::shared_ptr<File> file = file_;
  const uint64_t off = file_size_;
  const size_t n = batch.size();
  file_size_ += n;
  inflight_ += n;
  MessageSpool* self = this;  // the answer runs only while the owner (and so this) lives
  bool queued = async_.submit([file, off, batch = std::move(batch), dir = dir_, post = async_.post, self] {
    std::string err;
    bool no_space = false;
    if (file->fd < 0 && file->open_error.empty()) file->fd = openSpoolFile(dir, &file->open_error);
    if (file->fd < 0)
      err = file->open_error;
    else
      writeAt(file->fd, batch, off, &err, &no_space);
    post([self, file, n = batch.size(), err, no_space] { self->writeDone(file, n, err, no_space); });
  });
  if (!queued) {
    inflight_ -= n;
    fail("spool thread queue full", false);
  }
}

void MessageSpool::writeDone(const std::shared_ptr<File>& file, size_t n, const std::string& err,
                             bool no_space) {
  if (file != file_) return;  // cleared meanwhile
  const bool was_congested = congested();
  inflight_ -= n;
  if (!err.empty()) fail(err, no_space);
  if (inflight_ == 0 && flush_done_) {
    auto done = std::move(flush_done_);
    flush_done_ = nullptr;
    done();
    return;
  }
  if (was_congested && !congested() && on_drained_) on_drained_();
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
  if (!file_ && size_ <= limit_) {
    mem_.append(bytes);
    return;
  }
  if (!file_) {
    head_.assign(mem_, 0, std::min(mem_.size(), kHead));
    if (async())
      file_ = std::make_shared<File>();  // opened by the first write on the spool thread
    else if (!openSync())
      return;
  }
  if (head_.size() < kHead) head_.append(bytes.substr(0, kHead - head_.size()));
  mem_.append(bytes);
  if (mem_.size() < kBatch) return;
  if (async()) {
    submitWrite(std::move(mem_));
    mem_ = std::string();
    return;
  }
  if (!writeSync(mem_)) return;
  mem_.clear();
  if (mem_.capacity() > 2 * kBatch) std::string().swap(mem_);
}

bool MessageSpool::flush() noexcept {
  if (failed()) return false;
  if (!file_ || mem_.empty()) return true;
  bool ok = writeSync(mem_);
  std::string().swap(mem_);
  return ok;
}

bool MessageSpool::flushAsync(std::function<void()> done) {
  if (failed() || !file_) return true;
  if (!async()) {
    flush();
    return true;
  }
  if (!mem_.empty()) {
    submitWrite(std::move(mem_));
    mem_ = std::string();
    if (failed()) return true;
  }
  if (inflight_ == 0) return true;
  flush_done_ = std::move(done);
  return false;
}

bool MessageSpool::read(uint64_t off, size_t n, std::string* out) noexcept {
  out->clear();
  if (!file_) {
    if (off < mem_.size()) out->assign(mem_, static_cast<size_t>(off), n);
    return true;
  }
  std::string err;
  if (!readAt(file_->fd, off, n, out, &err)) {
    error_ = std::move(err);
    return false;
  }
  return true;
}

MessageSpool::Fetch MessageSpool::fetch(uint64_t off, size_t n, std::string* out,
                                        std::function<void()> ready) {
  if (!file_ || !async()) return read(off, n, out) ? Fetch::kDone : Fetch::kError;
  if (failed()) return Fetch::kError;
  if (read_held_ && read_off_ == off && read_n_ == n) {
    read_held_ = false;
    if (!read_ok_) return Fetch::kError;
    out->swap(read_data_);
    std::string().swap(read_data_);
    return Fetch::kDone;
  }
  read_held_ = false;
  read_ready_ = std::move(ready);
  if (read_inflight_) return Fetch::kPending;  // another range: asked again when that one is in
  read_inflight_ = true;
  read_off_ = off;
  read_n_ = n;
  MessageSpool* self = this;
  bool queued = async_.submit([file = file_, off, n, post = async_.post, self] {
    std::string data, err;
    // The writes before this read ran first (one spool thread, in order): the file is there.
    bool ok = file->fd >= 0 ? readAt(file->fd, off, n, &data, &err) : (err = file->open_error, false);
    post([self, file, ok, data = std::move(data), err]() mutable {
      self->readDone(file, ok, std::move(data), err);
    });
  });
  if (!queued) {
    read_inflight_ = false;
    fail("spool thread queue full", false);
    return Fetch::kError;
  }
  return Fetch::kPending;
}

void MessageSpool::readDone(const std::shared_ptr<File>& file, bool ok, std::string data,
                            const std::string& err) {
  if (file != file_) return;  // cleared meanwhile
  read_inflight_ = false;
  read_held_ = true;
  read_ok_ = ok;
  read_data_ = std::move(data);
  if (!ok) fail(err, false);
  if (read_ready_) {
    auto ready = read_ready_;  // may fetch again, which replaces read_ready_
    ready();
  }
}

}  // namespace mailgate::session
