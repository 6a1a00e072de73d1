#pragma once
// The epoll backend of io::Ring, for hosts where io_uring is blocked (seccomp profiles
// of container runtimes, kernel.io_uring_disabled). It interprets the io_uring
// submission entries mailgate fills, and only those, with epoll and non-blocking
// sockets, and produces completion records with io_uring's res/flags semantics, so
// the sessions and the reactor above run unchanged:
//   accept (multishot), recv (multishot, from the provided buffers), send, connect,
//   poll_add (multishot), timeout, link_timeout (after an IOSQE_IO_LINK entry),
//   async_cancel (by user_data, or by fd, one or all), nop.
// Anything else completes with -EINVAL and a log line.
//
// Readiness is level-triggered. An fd is in the epoll set only while it has an
// operation waiting; its interest (EPOLLIN for accept/recv/poll, EPOLLOUT for
// send/connect) is updated in one batch before each wait, and its state is dropped
// when its last operation completes or is cancelled, so a reused fd number starts
// clean. Operations, fd states, timers and completions live in vectors that grow to the
// high-water mark and are then reused: nothing is allocated per event.
#include <liburing.h>
#include <sys/epoll.h>

#include <cstdint>
#include <vector>

#include "gateway/core/result.h"

namespace mailgate::io {

class EpollRing {
 public:
  EpollRing() = default;
  ~EpollRing();
  EpollRing(const EpollRing&) = delete;
  EpollRing& operator=(const EpollRing&) = delete;

  // `bufs` holds buf_count buffers of buf_size bytes, all free, for group buf_group.
  Result<bool> init(unsigned entries, char* bufs, unsigned buf_count, unsigned buf_size, uint16_t buf_group);
  void close();

  // n consecutive entries, zeroed; returns true when the queue had to be submitted
  // first to make room (the entries of one call are always submitted together).
  bool sqes(unsigned n, io_uring_sqe** out);
  // Submits the queued entries, then waits until a completion is ready (wait_nr > 0)
  // or the nearest timeout expires. Returns the number of completions ready.
  int submitAndWait(unsigned wait_nr);
  void recycle(uint16_t bid);

  // Calls fn(io_uring_cqe*) for every completion, in order, then forgets them. fn may
  // take and submit entries (and so add completions; those are visited too).
  template <class F>
  unsigned forEachCqe(F&& fn) {
    size_t i = 0;
    for (; i < cq_.size(); i++) {
      io_uring_cqe c = cq_[i];  // a copy: fn may grow the vector
      fn(&c);
    }
    cq_.clear();
    return static_cast<unsigned>(i);
  }
  size_t pendingOps() const { return ops_.size() - free_ops_.size(); }
  size_t watchedFds() const { return watched_; }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;

  struct Op {
    uint64_t user_data = 0;
    uint64_t deadline_ns = 0;    // timeout, link_timeout
    const char* buf = nullptr;   // send, plain recv
    const void* addr = nullptr;  // connect: sockaddr; accept: sockaddr* out
    void* addr_len = nullptr;    // accept: socklen_t* out
    uint32_t len = 0;
    uint32_t done = 0;       // send: bytes sent so far (MSG_WAITALL)
    uint32_t msg_flags = 0;  // send/recv flags, accept flags, poll mask
    uint32_t addrlen = 0;    // connect
    uint32_t link = kNone;   // the op and its link_timeout point at each other
    uint32_t prev = kNone;   // in the fd's list, in submission order
    uint32_t next = kNone;
    uint32_t heap_pos = kNone;  // timeout, link_timeout: its place in timers_
    int fd = -1;
    uint16_t buf_group = 0;
    uint8_t opcode = 0;
    bool multishot = false;
    bool buffer_select = false;
    bool active = false;
  };
  struct FdState {
    uint32_t head = kNone;
    uint32_t tail = kNone;
    uint32_t registered = 0;  // the interest epoll has, 0 when not in the set
    bool in_set = false;
    bool dirty = false;
  };

  void submitQueued();
  void start(const io_uring_sqe& s, const io_uring_sqe* link_timeout);
  void reject(const io_uring_sqe& s, const char* why);
  uint32_t allocOp();
  void freeOp(uint32_t i);
  FdState& fdState(int fd);
  void attach(uint32_t i);
  void detach(uint32_t i);
  void post(uint64_t user_data, int res, uint32_t flags);
  // Final completion of op i (and of its link_timeout, which reads -ECANCELED).
  void finish(uint32_t i, int res, uint32_t flags);
  void cancelOp(uint32_t i);
  int cancel(const io_uring_sqe& s);
  void armTimer(uint32_t i, const __kernel_timespec* ts);
  void expireTimers(uint64_t now_ns);
  // timers_ is a binary min-heap of op indices on their deadline; each timer op knows
  // its position, so a completed or cancelled one leaves the heap at once.
  bool earlier(size_t a, size_t b) const {
    return ops_[timers_[a]].deadline_ns < ops_[timers_[b]].deadline_ns;
  }
  void heapSet(size_t pos, uint32_t op);
  void siftUp(size_t pos);
  void siftDown(size_t pos);
  void heapRemove(uint32_t op);
  int waitTimeoutMs(uint64_t now_ns);
  void markDirty(int fd);
  void flushInterest();
  void onReady(int fd, uint32_t events);
  // Try op i now; it stays queued on its fd when it must wait for readiness.
  void tryAccept(uint32_t i);
  void tryRecv(uint32_t i);
  void trySend(uint32_t i);
  void tryConnectDone(uint32_t i);
  static uint64_t nowNs();

  int epfd_ = -1;
  std::vector<io_uring_sqe> sq_;
  unsigned sq_len_ = 0;
  std::vector<io_uring_cqe> cq_;
  std::vector<Op> ops_;
  std::vector<uint32_t> free_ops_;
  std::vector<FdState> fds_;  // by fd number
  std::vector<int> dirty_;
  std::vector<uint32_t> timers_;  // min-heap of timer ops on their deadline
  std::vector<uint16_t> free_bufs_;
  std::vector<epoll_event> events_;
  char* bufs_ = nullptr;
  unsigned buf_count_ = 0;
  unsigned buf_size_ = 0;
  uint16_t buf_group_ = 0;
  size_t watched_ = 0;
};

}  // namespace mailgate::io
