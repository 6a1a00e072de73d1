#pragma once
// One ring per reactor thread, with one provided-buffer ring for receives: an io_uring,
// or where io_uring is blocked the epoll backend (gateway/io/epoll_ring.h), which takes
// the same submission entries and gives the same completions.
#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "gateway/core/result.h"
#include "gateway/io/epoll_ring.h"

namespace mailgate::io {

class Ring {
 public:
  static constexpr unsigned kEntries = 4096;
  static constexpr unsigned kBufCount = 256;   // provided buffers (power of two)
  static constexpr unsigned kBufSize = 65536;  // bytes each
  static constexpr uint16_t kBufGroup = 1;

  enum class Backend : uint8_t { kIoUring, kEpoll };

  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  static constexpr unsigned kMaxChain = 8;  // longest linked chain sqes() hands out

  // Sets up the ring, probes the operations mailgate needs, registers the buffer ring.
  // `entries` is the submission queue size (tests use small rings).
  Result<bool> init(unsigned entries = kEntries, Backend backend = Backend::kIoUring);
  Backend backend() const { return epoll_ ? Backend::kEpoll : Backend::kIoUring; }
  static const char* backendName(Backend b) { return b == Backend::kEpoll ? "epoll" : "io_uring"; }
  // Tears the ring down; call it on the thread that set it up (single issuer).
  void close();
  // One submission entry. Never null and never loops: when the submission queue is
  // full it submits once; when that fails (-EBUSY, -EAGAIN: completions must be
  // reaped first) the entry is parked in a backlog that submitAndWait() moves into
  // the queue, in order, once there is room (counted in sq_backlogged).
  io_uring_sqe* sqe();
  // n (<= kMaxChain) entries that reach the kernel together, in order, with no submit
  // between them: the only way to take the members of an IOSQE_IO_LINK chain (an op
  // and its linked timeout). A submit between two members would end the chain early
  // and the op would run without its timeout.
  void sqes(unsigned n, io_uring_sqe** out);
  // The reactor's wait: moves the backlog into the queue, submits, waits for wait_nr
  // completions. A negative result is -errno (-EBUSY/-EAGAIN: reap, then call again).
  // On epoll, the wait ends at the nearest timeout (the reactor's tick) at the latest.
  int submitAndWait(unsigned wait_nr);
  // Calls fn(io_uring_cqe*) for each completion that is ready, in order, and marks them
  // seen; returns how many. fn may take and submit entries.
  template <class F>
  unsigned forEachCqe(F&& fn) {
    if (epoll_) return epoll_->forEachCqe(fn);
    io_uring_cqe* cqe;
    unsigned head;
    unsigned count = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      fn(cqe);
      count++;
    }
    io_uring_cq_advance(&ring_, count);
    return count;
  }
  size_t backlog() const { return backlog_.size(); }
  io_uring* raw() { return &ring_; }  // io_uring backend only

  char* buffer(uint16_t bid) { return bufs_ + static_cast<size_t>(bid) * kBufSize; }
  // Gives buffer `bid` back to the kernel (only a buffer a completion carried).
  void recycle(uint16_t bid);

  // Written by the ring's thread only, read (relaxed) when /metrics is scraped.
  std::atomic<uint64_t> sq_full_submits{0};   // submits forced by a full submission queue
  std::atomic<uint64_t> sq_submit_errors{0};  // of those, and of backlog moves, failed ones
  std::atomic<uint64_t> sq_backlogged{0};     // entries parked because the queue stayed full

 private:
  static void bump(std::atomic<uint64_t>& c) {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  // Moves whole chains from the backlog into the submission queue while they fit.
  void moveBacklog();

  io_uring ring_{};
  bool inited_ = false;
  io_uring_buf_ring* br_ = nullptr;
  char* bufs_ = nullptr;
  size_t br_bytes_ = 0;
  std::deque<io_uring_sqe> backlog_;  // deque: pointers handed out stay valid as it grows
  std::unique_ptr<EpollRing> epoll_;  // set: the epoll backend is in use
};

// Describes why io_uring cannot be used here, or empty when it can (for --version/start-up).
std::string probeIoUring();

}  // namespace mailgate::io
