#pragma once
// One io_uring per reactor thread, with one provided-buffer ring for receives.
#include <liburing.h>

#include <cstdint>
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

  // Sets up the ring, probes the operations mailgate needs, registers the buffer ring.
  Result<bool> init();
  // Tears the ring down; call it on the thread that set it up (single issuer).
  void close();
  // Never returns null: when the submission queue is full it submits first.
  io_uring_sqe* sqe();
  io_uring* raw() { return &ring_; }

  char* buffer(uint16_t bid) { return bufs_ + static_cast<size_t>(bid) * kBufSize; }
  // Gives buffer `bid` back to the kernel (only a buffer a completion carried).
  void recycle(uint16_t bid);

  uint64_t sq_full_submits = 0;

 private:
  io_uring ring_{};
  bool inited_ = false;
  io_uring_buf_ring* br_ = nullptr;
  char* bufs_ = nullptr;
  size_t br_bytes_ = 0;
};

// Describes why io_uring cannot be used here, or empty when it can (for --version/start-up).
std::string probeIoUring();

}  // namespace mailgate::io
