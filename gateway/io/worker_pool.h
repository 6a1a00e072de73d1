#pragma once
// An executor: a small pool of threads for blocking work, with a bounded queue.
// Directory work (libpq, password hashing, DNS) and blocking content work run on
// executors of their own, so a slow scanner never delays a login. Jobs post their
// answers back to the owning reactor's Mailbox. A full queue refuses at once (the
// caller answers a temporary failure); a job that waited past its own deadline is
// dropped unrun (its session has already been answered) and counted.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gateway/core/executor.h"

namespace mailgate::io {

struct ExecutorStats {
  std::atomic<uint64_t> submitted{0};
  std::atomic<uint64_t> rejected{0};  // queue full
  std::atomic<uint64_t> expired{0};   // waited past the job's deadline: dropped unrun
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> wait_us_total{0};  // time from submit to start, summed over started jobs
  std::atomic<uint64_t> wait_us_max{0};
  std::atomic<uint64_t> depth{0};  // jobs queued now
};

class WorkerPool final : public core::Executor {
 public:
  using Clock = std::chrono::steady_clock;
  WorkerPool(std::string name, unsigned threads, size_t max_queue);
  ~WorkerPool();
  // false when the queue is full (the caller answers with a temporary failure).
  bool submit(std::function<void()> job) { return submit(std::move(job), std::chrono::milliseconds(0)); }
  // The same; a job still queued after max_wait (> 0) is dropped unrun.
  bool submit(std::function<void()> job, std::chrono::milliseconds max_wait) override;
  void stop();
  const std::string& name() const { return name_; }
  size_t maxQueue() const { return max_queue_; }
  unsigned threads() const { return nthreads_; }
  const ExecutorStats& stats() const { return stats_; }

 private:
  struct Job {
    std::function<void()> fn;
    Clock::time_point queued;
    Clock::time_point deadline;  // epoch = none
  };
  void run();
  std::string name_;
  unsigned nthreads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  size_t max_queue_;
  ExecutorStats stats_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// Cross-thread queue into one reactor: any thread posts, the reactor drains when
// its eventfd fires (watched through the reactor's ring).
class Mailbox {
 public:
  Mailbox();
  ~Mailbox();
  int fd() const { return efd_; }
  void post(std::function<void()> fn);
  // Called by the owning reactor: runs everything posted so far.
  void drain();

 private:
  int efd_ = -1;
  std::mutex mu_;
  std::vector<std::function<void()>> items_;
  std::vector<std::function<void()>> running_;
};

}  // namespace mailgate::io
