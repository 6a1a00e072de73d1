#pragma once
// One io_uring per reactor thread, with one provided-buffer ring for receives.
#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <string>

#include "gateway/core/result.h"

namespace mailgate::io {

class Ring {
 public:
  static constexpr unsigned kEntries = 4096;
  static constexpr unsigned kBufCount = 256;   // provided buffers (power of two)
  static constexpr unsigned kBufSize = 65536;  // bytes each
  static constexpr uint16_t kBufGroup = 1;

  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  static constexpr unsigned kMaxChain = 8;  // longest linked chain sqes() hands out

  // Sets up the ring, probes the operations mailgate needs, registers the buffer ring.
  // `entries` is the submission queue size (tests use small rings).
  Result<bool> init(unsigned entries = kEntries);
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
  int submitAndWait(unsigned wait_nr);
  size_t backlog() const { return backlog_.size(); }
  io_uring* raw() { return &ring_; }

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
};

// Describes why io_uring cannot be used here, or empty when it can (for --version/start-up).
std::string probeIoUring();

}  // namespace mailgate::io
