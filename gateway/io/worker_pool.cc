#include "gateway/io/worker_pool.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace mailgate::io {

WorkerPool::WorkerPool(std::string name, unsigned threads, size_t max_queue)
    : name_(std::move(name)), nthreads_(threads ? threads : 1), max_queue_(max_queue ? max_queue : 1) {
  threads = nthreads_;
  for (unsigned i = 0; i < threads; i++) threads_.emplace_back([this] { run(); });
}

WorkerPool::~WorkerPool() { stop(); }

void WorkerPool::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

bool WorkerPool::submit(std::function<void()> job, std::chrono::milliseconds max_wait) {
  const Clock::time_point now = Clock::now();
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_ || queue_.size() >= max_queue_) {
      stats_.rejected.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(Job{std::move(job), now, max_wait.count() > 0 ? now + max_wait : Clock::time_point{}});
    stats_.depth.store(queue_.size(), std::memory_order_relaxed);
  }
  stats_.submitted.fetch_add(1, std::memory_order_relaxed);
  cv_.notify_one();
  return true;
}

void WorkerPool::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      job = std::move(queue_.front());
      queue_.pop_front();
      stats_.depth.store(queue_.size(), std::memory_order_relaxed);
    }
    const Clock::time_point start = Clock::now();
    if (job.deadline != Clock::time_point{} && start > job.deadline) {
      stats_.expired.fetch_add(1, std::memory_order_relaxed);
      continue;  // its session was answered at the deadline
    }
    const uint64_t waited =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(start - job.queued).count());
    stats_.wait_us_total.fetch_add(waited, std::memory_order_relaxed);
    uint64_t prev = stats_.wait_us_max.load(std::memory_order_relaxed);
    while (waited > prev && !stats_.wait_us_max.compare_exchange_weak(prev, waited, std::memory_order_relaxed)) {
    }
    job.fn();
    stats_.completed.fetch_add(1, std::memory_order_relaxed);
  }
}

Mailbox::Mailbox() { efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

Mailbox::~Mailbox() {
  if (efd_ >= 0) close(efd_);
}

void Mailbox::post(std::function<void()> fn) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> g(mu_);
    was_empty = items_.empty();
    items_.push_back(std::move(fn));
  }
  if (was_empty) {
    uint64_t one = 1;
    ssize_t r = write(efd_, &one, sizeof one);
    (void)r;
  }
}

void Mailbox::drain() {
  uint64_t v;
  ssize_t r = read(efd_, &v, sizeof v);
  (void)r;
  {
    std::lock_guard<std::mutex> g(mu_);
    running_.swap(items_);
  }
  for (auto& fn : running_) fn();
  running_.clear();
}

}  // namespace mailgate::io
