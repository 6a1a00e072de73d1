#pragma once
// A small pool of threads for blocking work (password hashing, directory lookups,
// DNS). Jobs post their answers back to the owning reactor's Mailbox.
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mailgate::io {

class WorkerPool {
 public:
  WorkerPool(unsigned threads, size_t max_queue);
  ~WorkerPool();
  // false when the queue is full (the caller answers with a temporary failure).
  bool submit(std::function<void()> job);
  void stop();

 private:
  void run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t max_queue_;
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
