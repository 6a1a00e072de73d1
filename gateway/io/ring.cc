#include "gateway/io/ring.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace mailgate::io {

Ring::~Ring() { close(); }

void Ring::close() {
  if (!inited_) return;
  inited_ = false;
  backlog_.clear();
  if (epoll_) {
    epoll_.reset();
    munmap(bufs_, static_cast<size_t>(kBufCount) * kBufSize);
    bufs_ = nullptr;
    return;
  }
  if (br_) {
    io_uring_unregister_buf_ring(&ring_, kBufGroup);
    munmap(br_, br_bytes_);
  }
  io_uring_queue_exit(&ring_);
  if (bufs_) munmap(bufs_, static_cast<size_t>(kBufCount) * kBufSize);
  bufs_ = nullptr;
  br_ = nullptr;
}

static std::string disabledHint() {
  std::ifstream f("/proc/sys/kernel/io_uring_disabled");
  int v = 0;
  if (f >> v && v != 0) return " (kernel.io_uring_disabled=" + std::to_string(v) + ")";
  return " (a seccomp profile or container runtime may block io_uring_setup)";
}

Result<bool> Ring::init(unsigned entries, Backend backend) {
  if (backend == Backend::kEpoll) {
    void* mem = mmap(nullptr, static_cast<size_t>(kBufCount) * kBufSize, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return Error{"cannot allocate receive buffers"};
    bufs_ = static_cast<char*>(mem);
    auto e = std::make_unique<EpollRing>();
    auto r = e->init(entries, bufs_, kBufCount, kBufSize, kBufGroup);
    if (!r) {
      munmap(bufs_, static_cast<size_t>(kBufCount) * kBufSize);
      bufs_ = nullptr;
      return r;
    }
    epoll_ = std::move(e);
    inited_ = true;
    return true;
  }
  io_uring_params p{};
  // The ring is set up on the thread that uses it: completions are then run only
  // when that thread waits for them (DEFER_TASKRUN), in batches.
  p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
  p.cq_entries = entries * 4;
  int r = io_uring_queue_init_params(entries, &ring_, &p);
  if (r == -EINVAL) {  // older kernel without some flags
    p = io_uring_params{};
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    r = io_uring_queue_init_params(entries, &ring_, &p);
  }
  if (r < 0) return Error{std::string("io_uring_setup failed: ") + std::strerror(-r) + disabledHint()};
  inited_ = true;

  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  if (!probe) return Error{"io_uring probe failed"};
  struct Need {
    int op;
    const char* name;
  } needs[] = {{IORING_OP_ACCEPT, "accept"},
               {IORING_OP_RECV, "recv"},
               {IORING_OP_SEND, "send"},
               {IORING_OP_CONNECT, "connect"},
               {IORING_OP_LINK_TIMEOUT, "link_timeout"},
               {IORING_OP_ASYNC_CANCEL, "async_cancel"},
               {IORING_OP_TIMEOUT, "timeout"},
               {IORING_OP_POLL_ADD, "poll_add"}};
  std::string missing;
  for (const auto& n : needs)
    if (!io_uring_opcode_supported(probe, n.op)) missing += std::string(missing.empty() ? "" : ", ") + n.name;
  io_uring_free_probe(probe);
  if (!missing.empty())
    return Error{"io_uring lacks operations: " + missing + " (kernel 6.0 or later needed)"};

  size_t bytes = static_cast<size_t>(kBufCount) * kBufSize;
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return Error{"cannot allocate receive buffers"};
  bufs_ = static_cast<char*>(mem);
  br_bytes_ = kBufCount * sizeof(io_uring_buf);
  void* brm = mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (brm == MAP_FAILED) return Error{"cannot allocate buffer ring"};
  br_ = static_cast<io_uring_buf_ring*>(brm);
  io_uring_buf_ring_init(br_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(br_);
  reg.ring_entries = kBufCount;
  reg.bgid = kBufGroup;
  r = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (r < 0) {
    munmap(br_, br_bytes_);
    br_ = nullptr;
    return Error{std::string("provided buffer rings unsupported: ") + std::strerror(-r) +
                 " (kernel 5.19 or later needed)"};
  }
  int mask = io_uring_buf_ring_mask(kBufCount);
  for (unsigned i = 0; i < kBufCount; i++)
    io_uring_buf_ring_add(br_, buffer(static_cast<uint16_t>(i)), kBufSize, static_cast<uint16_t>(i), mask,
                          static_cast<int>(i));
  io_uring_buf_ring_advance(br_, static_cast<int>(kBufCount));
  return true;
}

io_uring_sqe* Ring::sqe() {
  io_uring_sqe* s = nullptr;
  sqes(1, &s);
  return s;
}

void Ring::sqes(unsigned n, io_uring_sqe** out) {
  if (epoll_) {
    if (epoll_->sqes(n, out)) bump(sq_full_submits);
    return;
  }
  if (!backlog_.empty()) moveBacklog();
  if (backlog_.empty() && io_uring_sq_space_left(&ring_) < n) {
    // One submit, never a loop: if the kernel cannot take the entries now (its
    // completion queue overflowed, or no memory), looping here would spin forever,
    // since only the reactor's wait reaps completions.
    bump(sq_full_submits);
    if (io_uring_submit(&ring_) < 0) bump(sq_submit_errors);
  }
  if (backlog_.empty() && io_uring_sq_space_left(&ring_) >= n) {
    for (unsigned i = 0; i < n; i++) out[i] = io_uring_get_sqe(&ring_);  // room checked: not null
    return;
  }
  // The queue stays full, or older entries wait before these: park them behind those.
  for (unsigned i = 0; i < n; i++) {
    io_uring_sqe& s = backlog_.emplace_back();
    std::memset(&s, 0, sizeof s);
    out[i] = &s;
    bump(sq_backlogged);
  }
}

void Ring::moveBacklog() {
  while (!backlog_.empty()) {
    size_t chain = 1;  // a chain is the entries up to the first one without a link flag
    while (chain < backlog_.size() && (backlog_[chain - 1].flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)))
      chain++;
    if (io_uring_sq_space_left(&ring_) < chain) return;
    for (size_t i = 0; i < chain; i++) {
      *io_uring_get_sqe(&ring_) = backlog_.front();
      backlog_.pop_front();
    }
  }
}

int Ring::submitAndWait(unsigned wait_nr) {
  if (epoll_) return epoll_->submitAndWait(wait_nr);
  while (!backlog_.empty()) {
    moveBacklog();
    int r = io_uring_submit(&ring_);
    if (r < 0) {
      bump(sq_submit_errors);
      return r;  // the caller reaps what has completed, which makes room, and comes back
    }
    if (r == 0) break;
  }
  return io_uring_submit_and_wait(&ring_, wait_nr);
}

void Ring::recycle(uint16_t bid) {
  if (epoll_) return epoll_->recycle(bid);
  io_uring_buf_ring_add(br_, buffer(bid), kBufSize, bid, io_uring_buf_ring_mask(kBufCount), 0);
  io_uring_buf_ring_advance(br_, 1);
}

std::string probeIoUring() {
  Ring r;
  auto res = r.init();
  return res.ok() ? std::string() : res.error();
}

}  // namespace mailgate::io
