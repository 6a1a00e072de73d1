#pragma once
// One reactor per thread: its own io_uring, its own SO_REUSEPORT listening sockets,
// its own sessions. A session lives and dies on one reactor.
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "conf/config.h"
#include "gateway/core/result.h"
#include "gateway/io/listener.h"
#include "gateway/io/ring.h"
#include "gateway/io/tag.h"
#include "gateway/io/worker_pool.h"
#include "gateway/session/listener_stats.h"

namespace mailgate::session {

class Session;

// The ring kind every reactor of this process uses, chosen once at start from
// server.io and logged with the reason: auto takes io_uring when the kernel lets us
// have one and epoll otherwise; io_uring fails when it is unavailable.
Result<io::Ring::Backend> chooseIoBackend(conf::IoBackend want);

struct ListenSocket {
  std::string listener;  // listener name
  ListenerStats* stats = nullptr;
  int fd = -1;
  bool armed = false;
};

// Per-reactor counters: written by the reactor thread only, read (relaxed) when
// /metrics is scraped.
struct Counter {
  std::atomic<uint64_t> v{0};
  void operator++(int) { v.store(v.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
  uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

struct ReactorStats {
  Counter accepted;
  Counter accept_errors;
  Counter stale_completions;
  Counter late_worker_answers;
  Counter recv_nobufs;
  Counter logins;
  Counter auth_failures;
  Counter temp_failures;
  Counter backend_failures;
  // SMTP: messages answered 250 (after the node), 4xx, 5xx at their end; framing
  // errors (bare CR/LF, NUL: possible smuggling); content sent before the 354
  // (improper pipelining after DATA); messages spooled to a file.
  Counter smtp_delivered;
  Counter smtp_deferred;
  Counter smtp_rejected;
  Counter smtp_framing_errors;
  Counter smtp_pipelining_errors;
  Counter smtp_spooled_to_file;
  std::atomic<uint64_t> live{0};
};

class Reactor {
 public:
  Reactor(unsigned index, io::WorkerPool& workers, io::WorkerPool& content);
  ~Reactor();

  // Opens one listening socket per listener address; the ring of kind `io` is set up
  // by run(), on the reactor's thread.
  Result<bool> init(const std::vector<std::pair<std::string, io::SockAddr>>& listen,
                    io::Ring::Backend io = io::Ring::Backend::kIoUring);
  void run();  // the thread body; returns when stopped and every session is gone
  // Thread-safe: stop accepting; sessions get `grace` to finish.
  void requestStop(std::chrono::milliseconds grace);

  io::Ring& ring() { return ring_; }
  io::Ring::Backend io() const { return io_; }  // fixed before run(): readable from any thread
  // One buffer per reactor for decrypted client/node bytes, used only for the length of
  // one delivery (sessions take it and give it back), so that no session keeps a 16 KiB+
  // buffer of its own between reads.
  std::string& plainScratch() { return plain_scratch_; }
  // The directory executor (libpq, password hashing, DNS).
  io::WorkerPool& workers() { return workers_; }
  // The executor for blocking content work (never shared with the directory).
  io::WorkerPool& contentWorkers() { return content_; }
  // This reactor's spool thread: file work of SMTP message spools (open, write, read),
  // in order, off the reactor. Answers come back through postToSession().
  io::WorkerPool& spoolIo() { return spool_io_; }
  // Thread-safe: runs fn on this reactor's thread.
  void post(std::function<void()> fn) { mailbox_.post(std::move(fn)); }
  // For answers from workers: fn runs only if the session is still the same one.
  void postToSession(uint32_t slot, uint32_t gen, std::function<void(Session&)> fn);
  // The session asks to be freed once it has nothing in flight.
  void retire(Session* s);
  unsigned index() const { return index_; }
  uint64_t nowMs() const { return now_ms_; }
  // Thread-safe: the steady clock (ms) at this reactor's last tick, for the watchdog.
  uint64_t heartbeatMs() const { return heartbeat_ms_.load(std::memory_order_relaxed); }
  std::string newSessionId();
  ReactorStats stats;

  size_t sessionCount() const { return live_; }
  // The counters of the listener that accepted the session in `slot` (null: none).
  ListenerStats* listenerStatsOf(uint32_t slot) const {
    return slot < slot_listener_.size() ? slot_listener_[slot] : nullptr;
  }
  // This reactor's spool executor, for /metrics.
  const io::WorkerPool& spoolExecutor() const { return spool_io_; }

 private:
  std::string plain_scratch_;
  void armAccept(size_t i);
  void armTick();
  void armWake();
  void onAccept(size_t i, int res, uint32_t flags);
  void onTick();
  void dispatch(io_uring_cqe* cqe);
  void reap();
  void updateClock();

  unsigned index_;
  io::WorkerPool& workers_;
  io::WorkerPool& content_;
  io::Ring ring_;
  io::Ring::Backend io_ = io::Ring::Backend::kIoUring;
  io::Mailbox mailbox_;
  std::vector<ListenSocket> listen_;
  std::vector<Session*> slots_;
  std::vector<uint32_t> gens_;
  std::vector<ListenerStats*> slot_listener_;  // by slot: whose `active` the session counts in
  std::vector<uint32_t> free_;
  std::vector<Session*> retired_;
  size_t live_ = 0;
  uint64_t now_ms_ = 0;
  std::atomic<uint64_t> heartbeat_ms_{0};
  uint64_t sid_counter_ = 0;
  uint64_t sid_base_ = 0;
  __kernel_timespec tick_ts_{};
  bool stopping_ = false;
  uint64_t stop_deadline_ = 0;
  bool accept_rearm_needed_ = false;
  unsigned submit_errors_ = 0;
  // Last: stopped (its queue run out) before the mailbox its answers go to is gone.
  static constexpr size_t kSpoolQueue = 4096;
  io::WorkerPool spool_io_{"spool", 1, kSpoolQueue};
};

}  // namespace mailgate::session
