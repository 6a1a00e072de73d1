#pragma once
// Somewhere to run blocking work off the reactor threads: a bounded queue and a few
// threads (gateway/io/worker_pool.h). Filters get the executors they may use when
// they are created; the answer goes back through the filter's Resumer.
#include <chrono>
#include <functional>

namespace mailgate::core {

class Executor {
 public:
  virtual ~Executor() = default;
  // false when the queue is full: the caller answers a temporary failure at once.
  // A job still queued after max_wait (> 0) is dropped unrun and counted.
  virtual bool submit(std::function<void()> job, std::chrono::milliseconds max_wait) = 0;
};

}  // namespace mailgate::core
