#include "gateway/io/worker_pool.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace mailgate::io {

WorkerPool::WorkerPool(unsigned threads, size_t max_queue) : max_queue_(max_queue) {
  if (threads == 0) threads = 1;
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

bool WorkerPool::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_ || queue_.size() >= max_queue_) return false;
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void WorkerPool::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
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
