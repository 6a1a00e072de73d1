#include "gateway/io/epoll_ring.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>

#include "gateway/core/log.h"

namespace mailgate::io {

namespace {

constexpr unsigned kMaxEvents = 256;
constexpr int kAcceptBurst = 32;  // accepts per readiness, then the others get a turn
constexpr int kRecvBurst = 4;     // full buffers per readiness

bool retryable(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

const char* opName(uint8_t op) {
  switch (op) {
    case IORING_OP_NOP:
      return "nop";
    case IORING_OP_ACCEPT:
      return "accept";
    case IORING_OP_RECV:
      return "recv";
    case IORING_OP_SEND:
      return "send";
    case IORING_OP_CONNECT:
      return "connect";
    case IORING_OP_POLL_ADD:
      return "poll_add";
    case IORING_OP_TIMEOUT:
      return "timeout";
    case IORING_OP_LINK_TIMEOUT:
      return "link_timeout";
    case IORING_OP_ASYNC_CANCEL:
      return "async_cancel";
    default:
      return "unknown";
  }
}

void setNonBlocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

uint64_t toNs(const __kernel_timespec* ts) {
  if (!ts || ts->tv_sec < 0 || ts->tv_nsec < 0) return 0;
  return static_cast<uint64_t>(ts->tv_sec) * 1000000000ull + static_cast<uint64_t>(ts->tv_nsec);
}

}  // namespace

EpollRing::~EpollRing() { close(); }

uint64_t EpollRing::nowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

Result<bool> EpollRing::init(unsigned entries, char* bufs, unsigned buf_count, unsigned buf_size,
                             uint16_t buf_group) {
  close();
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return Error{std::string("epoll_create1 failed: ") + std::strerror(errno)};
  sq_.assign(std::max(entries, 8u), io_uring_sqe{});
  sq_len_ = 0;
  cq_.reserve(static_cast<size_t>(entries) * 2);
  ops_.reserve(entries);
  free_ops_.reserve(entries);
  fds_.resize(1024);
  dirty_.reserve(256);
  timers_.reserve(256);
  events_.resize(kMaxEvents);
  bufs_ = bufs;
  buf_count_ = buf_count;
  buf_size_ = buf_size;
  buf_group_ = buf_group;
  free_bufs_.clear();
  free_bufs_.reserve(buf_count);
  for (unsigned i = buf_count; i > 0; i--) free_bufs_.push_back(static_cast<uint16_t>(i - 1));  // 0 first
  return true;
}

void EpollRing::close() {
  if (epfd_ >= 0) ::close(epfd_);
  epfd_ = -1;
  sq_len_ = 0;
  cq_.clear();
  ops_.clear();
  free_ops_.clear();
  fds_.clear();
  dirty_.clear();
  timers_.clear();
  free_bufs_.clear();
  watched_ = 0;
}

bool EpollRing::sqes(unsigned n, io_uring_sqe** out) {
  bool forced = false;
  if (sq_len_ + n > sq_.size()) {
    submitQueued();  // like a full submission queue: what is queued goes first
    forced = true;
    if (n > sq_.size()) sq_.resize(n);
  }
  for (unsigned i = 0; i < n; i++) {
    io_uring_sqe& s = sq_[sq_len_++];
    std::memset(&s, 0, sizeof s);
    out[i] = &s;
  }
  return forced;
}

void EpollRing::recycle(uint16_t bid) {
  if (bid < buf_count_) free_bufs_.push_back(bid);
}

void EpollRing::post(uint64_t user_data, int res, uint32_t flags) {
  io_uring_cqe& c = cq_.emplace_back();
  c.user_data = user_data;
  c.res = res;
  c.flags = flags;
}

void EpollRing::reject(const io_uring_sqe& s, const char* why) {
  // A bug in the caller, not an environment failure: loud, but never silent or fatal.
  static log::RateLimit rl(5);
  if (rl.allow())
    log::error("epoll ring: entry rejected",
               {{"opcode", static_cast<unsigned>(s.opcode)}, {"op", opName(s.opcode)}, {"why", why}});
  post(s.user_data, -EINVAL, 0);
}

uint32_t EpollRing::allocOp() {
  uint32_t i;
  if (!free_ops_.empty()) {
    i = free_ops_.back();
    free_ops_.pop_back();
  } else {
    i = static_cast<uint32_t>(ops_.size());
    ops_.emplace_back();
  }
  ops_[i] = Op{};
  ops_[i].active = true;
  return i;
}

void EpollRing::freeOp(uint32_t i) {
  if (ops_[i].heap_pos != kNone) heapRemove(i);
  ops_[i].active = false;
  free_ops_.push_back(i);
}

EpollRing::FdState& EpollRing::fdState(int fd) {
  size_t need = static_cast<size_t>(fd) + 1;
  if (need > fds_.size()) fds_.resize(std::max(need, fds_.size() * 2));
  FdState& f = fds_[static_cast<size_t>(fd)];
  if (f.head == kNone && !f.in_set) setNonBlocking(fd);  // first seen (again): the number may be a new file
  return f;
}

void EpollRing::markDirty(int fd) {
  FdState& f = fds_[static_cast<size_t>(fd)];
  if (f.dirty) return;
  f.dirty = true;
  dirty_.push_back(fd);
}

void EpollRing::attach(uint32_t i) {
  Op& o = ops_[i];
  FdState& f = fdState(o.fd);
  o.prev = f.tail;
  o.next = kNone;
  if (f.tail != kNone)
    ops_[f.tail].next = i;
  else
    f.head = i;
  f.tail = i;
  markDirty(o.fd);
}

void EpollRing::detach(uint32_t i) {
  Op& o = ops_[i];
  FdState& f = fds_[static_cast<size_t>(o.fd)];
  if (o.prev != kNone)
    ops_[o.prev].next = o.next;
  else
    f.head = o.next;
  if (o.next != kNone)
    ops_[o.next].prev = o.prev;
  else
    f.tail = o.prev;
  o.prev = o.next = kNone;
  markDirty(o.fd);
}

void EpollRing::finish(uint32_t i, int res, uint32_t flags) {
  uint32_t link = ops_[i].link;
  uint64_t user_data = ops_[i].user_data;
  if (ops_[i].fd >= 0) detach(i);
  freeOp(i);
  post(user_data, res, flags);
  // An operation and its link_timeout end together: whichever finishes first cancels the other.
  if (link != kNone && ops_[link].active && ops_[link].link == i) {
    ops_[link].link = kNone;
    finish(link, -ECANCELED, 0);
  }
}

void EpollRing::cancelOp(uint32_t i) {
  Op& o = ops_[i];
  if (o.opcode == IORING_OP_LINK_TIMEOUT && o.link != kNone) {
    // Cancelling only the timeout leaves its operation running, without a deadline.
    ops_[o.link].link = kNone;
    o.link = kNone;
  }
  finish(i, -ECANCELED, 0);
}

int EpollRing::cancel(const io_uring_sqe& s) {
  const uint32_t cf = s.cancel_flags;
  if (cf & ~static_cast<uint32_t>(IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_FD)) {
    static log::RateLimit rl(5);
    if (rl.allow()) log::error("epoll ring: unsupported cancel flags", {{"flags", cf}});
    return -EINVAL;
  }
  const bool all = cf & IORING_ASYNC_CANCEL_ALL;
  int n = 0;
  if (cf & IORING_ASYNC_CANCEL_FD) {
    if (s.fd < 0 || static_cast<size_t>(s.fd) >= fds_.size()) return -ENOENT;
    FdState& f = fds_[static_cast<size_t>(s.fd)];
    while (f.head != kNone) {
      cancelOp(f.head);  // detaches it: the next one becomes the head
      n++;
      if (!all) break;
    }
  } else {
    for (uint32_t i = 0; i < ops_.size(); i++) {
      if (!ops_[i].active || ops_[i].user_data != s.addr) continue;
      cancelOp(i);
      n++;
      if (!all) break;
    }
  }
  if (n == 0) return -ENOENT;
  return all ? n : 0;
}

void EpollRing::heapSet(size_t pos, uint32_t op) {
  timers_[pos] = op;
  ops_[op].heap_pos = static_cast<uint32_t>(pos);
}

void EpollRing::siftUp(size_t pos) {
  while (pos > 0) {
    size_t parent = (pos - 1) / 2;
    if (!earlier(pos, parent)) return;
    uint32_t a = timers_[pos], b = timers_[parent];
    heapSet(pos, b);
    heapSet(parent, a);
    pos = parent;
  }
}

void EpollRing::siftDown(size_t pos) {
  for (;;) {
    size_t l = 2 * pos + 1, r = l + 1, m = pos;
    if (l < timers_.size() && earlier(l, m)) m = l;
    if (r < timers_.size() && earlier(r, m)) m = r;
    if (m == pos) return;
    uint32_t a = timers_[pos], b = timers_[m];
    heapSet(pos, b);
    heapSet(m, a);
    pos = m;
  }
}

void EpollRing::heapRemove(uint32_t op) {
  size_t pos = ops_[op].heap_pos;
  ops_[op].heap_pos = kNone;
  uint32_t last = timers_.back();
  timers_.pop_back();
  if (pos == timers_.size()) return;  // it was the last one
  heapSet(pos, last);
  siftDown(pos);
  siftUp(pos);
}

void EpollRing::armTimer(uint32_t i, const __kernel_timespec* ts) {
  ops_[i].deadline_ns = nowNs() + toNs(ts);
  timers_.push_back(i);
  ops_[i].heap_pos = static_cast<uint32_t>(timers_.size() - 1);
  siftUp(timers_.size() - 1);
}

void EpollRing::expireTimers(uint64_t now_ns) {
  // Expired: -ETIME (finishing removes it from the heap). A link_timeout then cancels
  // its operation (-ECANCELED).
  while (!timers_.empty() && ops_[timers_.front()].deadline_ns <= now_ns) finish(timers_.front(), -ETIME, 0);
}

int EpollRing::waitTimeoutMs(uint64_t now_ns) {
  if (timers_.empty()) return -1;
  uint64_t d = ops_[timers_.front()].deadline_ns;
  if (d <= now_ns) return 0;
  uint64_t ms = (d - now_ns + 999999) / 1000000;
  return ms > 60000 ? 60000 : static_cast<int>(ms);
}

void EpollRing::start(const io_uring_sqe& s, const io_uring_sqe* lt) {
  uint8_t allowed = IOSQE_IO_LINK | IOSQE_ASYNC;
  if (s.opcode == IORING_OP_RECV) allowed |= IOSQE_BUFFER_SELECT;
  auto fail = [&](const char* why) {
    reject(s, why);
    if (lt) post(lt->user_data, -ECANCELED, 0);  // the chain fails with its head
  };
  if (s.flags & ~allowed) return fail("unsupported sqe flags");
  if (lt && (lt->timeout_flags != 0 || lt->addr == 0)) {
    reject(*lt, "unsupported link_timeout flags");
    post(s.user_data, -ECANCELED, 0);
    return;
  }
  switch (s.opcode) {
    case IORING_OP_NOP:
      post(s.user_data, 0, 0);
      if (lt) post(lt->user_data, -ECANCELED, 0);
      return;
    case IORING_OP_ASYNC_CANCEL:
      post(s.user_data, cancel(s), 0);
      if (lt) post(lt->user_data, -ECANCELED, 0);
      return;
    case IORING_OP_TIMEOUT: {
      if (lt) return fail("a timeout cannot have a link_timeout");
      if (s.off != 0 || s.timeout_flags != 0 || s.addr == 0)
        return fail("unsupported timeout (count or flags)");
      uint32_t i = allocOp();
      ops_[i].opcode = s.opcode;
      ops_[i].user_data = s.user_data;
      armTimer(i, reinterpret_cast<const __kernel_timespec*>(s.addr));
      return;
    }
    case IORING_OP_LINK_TIMEOUT:
      return fail("link_timeout without a linked operation");
    case IORING_OP_ACCEPT:
      if (s.file_index != 0) return fail("fixed files are not supported");
      break;
    case IORING_OP_RECV:
      if ((s.ioprio & IORING_RECV_MULTISHOT) && !(s.flags & IOSQE_BUFFER_SELECT))
        return fail("multishot recv needs a buffer group");
      if ((s.flags & IOSQE_BUFFER_SELECT) && s.buf_group != buf_group_) return fail("unknown buffer group");
      break;
    case IORING_OP_SEND:
    case IORING_OP_CONNECT:
      break;
    case IORING_OP_POLL_ADD:
      if (s.len & ~static_cast<uint32_t>(IORING_POLL_ADD_MULTI)) return fail("unsupported poll flags");
      break;
    default:
      return fail("unsupported opcode");
  }
  if (s.fd < 0) return fail("no file descriptor");

  uint32_t i = allocOp();
  {
    Op& o = ops_[i];
    o.opcode = s.opcode;
    o.user_data = s.user_data;
    o.fd = s.fd;
    switch (s.opcode) {
      case IORING_OP_ACCEPT:
        o.addr = reinterpret_cast<const void*>(s.addr);
        o.addr_len = reinterpret_cast<void*>(s.addr2);
        o.msg_flags = s.accept_flags;
        o.multishot = s.ioprio & IORING_ACCEPT_MULTISHOT;
        break;
      case IORING_OP_RECV:
        o.buf = reinterpret_cast<const char*>(s.addr);
        o.len = s.len;
        o.msg_flags = s.msg_flags;
        o.buffer_select = s.flags & IOSQE_BUFFER_SELECT;
        o.buf_group = s.buf_group;
        o.multishot = s.ioprio & IORING_RECV_MULTISHOT;
        break;
      case IORING_OP_SEND:
        o.buf = reinterpret_cast<const char*>(s.addr);
        o.len = s.len;
        o.msg_flags = s.msg_flags;
        break;
      case IORING_OP_CONNECT:
        o.addr = reinterpret_cast<const void*>(s.addr);
        o.addrlen = static_cast<uint32_t>(s.off);
        break;
      case IORING_OP_POLL_ADD:
        o.msg_flags = s.poll32_events;
        o.multishot = s.len & IORING_POLL_ADD_MULTI;
        break;
      default:
        break;
    }
  }
  attach(i);
  uint32_t t = kNone;
  if (lt) {
    t = allocOp();  // may grow ops_: no Op& is held across it
    ops_[t].opcode = IORING_OP_LINK_TIMEOUT;
    ops_[t].user_data = lt->user_data;
    ops_[t].link = i;
    ops_[i].link = t;
  }
  // Like io_uring, try what can complete at once; the rest waits for readiness.
  if (s.opcode == IORING_OP_SEND) {
    trySend(i);
  } else if (s.opcode == IORING_OP_CONNECT) {
    const Op& o = ops_[i];
    int r = ::connect(o.fd, static_cast<const sockaddr*>(o.addr), static_cast<socklen_t>(o.addrlen));
    int err = r == 0 ? 0 : errno;
    if (r == 0)
      finish(i, 0, 0);
    else if (err != EINPROGRESS && err != EALREADY && err != EINTR && !retryable(err))
      finish(i, -err, 0);
  }
  if (t != kNone && ops_[t].active) armTimer(t, reinterpret_cast<const __kernel_timespec*>(lt->addr));
}

void EpollRing::submitQueued() {
  for (unsigned i = 0; i < sq_len_; i++) {
    const io_uring_sqe& s = sq_[i];
    if (s.flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)) {
      const io_uring_sqe* next = i + 1 < sq_len_ ? &sq_[i + 1] : nullptr;
      if (!(s.flags & IOSQE_IO_HARDLINK) && next && next->opcode == IORING_OP_LINK_TIMEOUT &&
          !(next->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK))) {
        start(s, next);
        i++;
        continue;
      }
      reject(s, "only an operation linked to its link_timeout is supported");
      continue;
    }
    start(s, nullptr);
  }
  sq_len_ = 0;
  flushInterest();
}

void EpollRing::flushInterest() {
  for (size_t k = 0; k < dirty_.size(); k++) {  // failing ops below may add to dirty_
    int fd = dirty_[k];
    FdState& f = fds_[static_cast<size_t>(fd)];
    f.dirty = false;
    if (f.head == kNone) {
      // No operation left: out of the set, state dropped, so that a closed and reused
      // fd number never inherits anything from this one.
      if (f.in_set) {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);  // ENOENT/EBADF: already gone with the file
        watched_--;
      }
      f = FdState{};
      continue;
    }
    uint32_t want = 0;
    for (uint32_t i = f.head; i != kNone; i = ops_[i].next) {
      switch (ops_[i].opcode) {
        case IORING_OP_ACCEPT:
        case IORING_OP_RECV:
          want |= EPOLLIN;
          break;
        case IORING_OP_SEND:
        case IORING_OP_CONNECT:
          want |= EPOLLOUT;
          break;
        case IORING_OP_POLL_ADD:
          want |= ops_[i].msg_flags & (EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLRDHUP);
          break;
        default:
          break;
      }
    }
    if (f.in_set && want == f.registered) continue;
    epoll_event ev{};
    ev.events = want;
    ev.data.fd = fd;
    int r;
    if (!f.in_set) {
      r = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
      if (r < 0 && errno == EEXIST) r = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
    } else {
      r = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
      if (r < 0 && errno == ENOENT) r = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
    }
    if (r < 0) {
      // Not pollable (EPERM), closed (EBADF), out of memory: the operations fail.
      int err = errno;
      if (f.in_set) {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
        f.in_set = false;
        watched_--;
      }
      while (f.head != kNone) finish(f.head, -err, 0);
      continue;
    }
    if (!f.in_set) watched_++;
    f.in_set = true;
    f.registered = want;
  }
  dirty_.clear();
}

void EpollRing::tryAccept(uint32_t i) {
  for (int k = 0; k < kAcceptBurst; k++) {
    const Op& o = ops_[i];
    int nfd = ::accept4(o.fd, static_cast<sockaddr*>(const_cast<void*>(o.addr)),
                        static_cast<socklen_t*>(o.addr_len),
                        static_cast<int>(o.msg_flags) | SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (nfd >= 0) {
      if (!o.multishot) return finish(i, nfd, 0);
      post(o.user_data, nfd, IORING_CQE_F_MORE);
      continue;
    }
    int err = errno;
    if (err == EINTR) continue;
    if (retryable(err)) return;
    return finish(i, -err, 0);  // EMFILE and friends end a multishot accept, as in the kernel
  }
}

void EpollRing::tryRecv(uint32_t i) {
  for (int k = 0; k < kRecvBurst; k++) {
    const Op& o = ops_[i];
    char* dst;
    size_t cap;
    int bid = -1;
    if (o.buffer_select) {
      if (free_bufs_.empty()) return finish(i, -ENOBUFS, 0);  // ends a multishot, as in the kernel
      bid = free_bufs_.back();
      dst = bufs_ + static_cast<size_t>(bid) * buf_size_;
      cap = o.len && o.len < buf_size_ ? o.len : buf_size_;
    } else {
      dst = const_cast<char*>(o.buf);
      cap = o.len;
    }
    ssize_t n = ::recv(o.fd, dst, cap, static_cast<int>(o.msg_flags) | MSG_DONTWAIT);
    if (n > 0) {
      uint32_t fl = 0;
      if (bid >= 0) {
        free_bufs_.pop_back();
        fl = IORING_CQE_F_BUFFER | (static_cast<uint32_t>(bid) << IORING_CQE_BUFFER_SHIFT);
      }
      if (!o.multishot) return finish(i, static_cast<int>(n), fl);
      post(o.user_data, static_cast<int>(n), fl | IORING_CQE_F_MORE);
      if (static_cast<size_t>(n) < cap) return;  // drained for now
      continue;
    }
    if (n == 0) return finish(i, 0, 0);  // EOF carries no buffer
    int err = errno;
    if (err == EINTR) continue;
    if (retryable(err)) return;
    return finish(i, -err, 0);
  }
}

void EpollRing::trySend(uint32_t i) {
  for (;;) {
    Op& o = ops_[i];
    int flags =
        static_cast<int>(o.msg_flags & ~static_cast<uint32_t>(MSG_WAITALL)) | MSG_DONTWAIT | MSG_NOSIGNAL;
    ssize_t n = ::send(o.fd, o.buf + o.done, o.len - o.done, flags);
    if (n >= 0) {
      o.done += static_cast<uint32_t>(n);
      // A short send completes short (the caller sends the rest), unless MSG_WAITALL.
      if ((o.msg_flags & MSG_WAITALL) && n > 0 && o.done < o.len) continue;
      return finish(i, static_cast<int>(o.done), 0);
    }
    int err = errno;
    if (err == EINTR) continue;
    if (retryable(err)) return;
    return finish(i, o.done > 0 ? static_cast<int>(o.done) : -err, 0);
  }
}

void EpollRing::tryConnectDone(uint32_t i) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(ops_[i].fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  finish(i, err ? -err : 0, 0);
}

void EpollRing::onReady(int fd, uint32_t events) {
  if (fd < 0 || static_cast<size_t>(fd) >= fds_.size()) return;
  const uint32_t in = events & (EPOLLIN | EPOLLERR | EPOLLHUP);
  const uint32_t out = events & (EPOLLOUT | EPOLLERR | EPOLLHUP);
  uint32_t i = fds_[static_cast<size_t>(fd)].head;
  while (i != kNone) {
    uint32_t next = ops_[i].next;  // i may finish; nothing else on this fd does
    switch (ops_[i].opcode) {
      case IORING_OP_ACCEPT:
        if (in) tryAccept(i);
        break;
      case IORING_OP_RECV:
        if (in) tryRecv(i);
        break;
      case IORING_OP_SEND:
        if (out) trySend(i);
        break;
      case IORING_OP_CONNECT:
        if (out) tryConnectDone(i);
        break;
      case IORING_OP_POLL_ADD: {
        uint32_t revents = events & (ops_[i].msg_flags | EPOLLERR | EPOLLHUP);
        if (!revents) break;
        if (ops_[i].multishot)
          post(ops_[i].user_data, static_cast<int>(revents), IORING_CQE_F_MORE);
        else
          finish(i, static_cast<int>(revents), 0);
        break;
      }
      default:
        break;
    }
    i = next;
  }
}

int EpollRing::submitAndWait(unsigned wait_nr) {
  if (epfd_ < 0) return -EBADF;
  submitQueued();
  uint64_t now = nowNs();
  expireTimers(now);
  flushInterest();
  int timeout = (wait_nr == 0 || cq_.size() >= wait_nr) ? 0 : waitTimeoutMs(now);
  int n = ::epoll_wait(epfd_, events_.data(), static_cast<int>(events_.size()), timeout);
  if (n < 0) {
    if (errno != EINTR) return -errno;
    n = 0;
  }
  for (int k = 0; k < n; k++)
    onReady(events_[static_cast<size_t>(k)].data.fd, events_[static_cast<size_t>(k)].events);
  expireTimers(nowNs());
  flushInterest();
  return static_cast<int>(cq_.size());
}

}  // namespace mailgate::io
