#pragma once
// The exception queue's delivery: a thread that looks for due entries every
// queue.scan_interval, claims them (a lease: any gateway sharing the store may), and
// delivers each entry's open recipients with the running configuration of the
// moment (the routing map and health of now: failover and route changes apply).
//
// Per entry and attempt:
//   - the recipients are routed (routeRecipients) and delivered node by node
//     (deliverToNode); a recipient a node accepted is written to the store at once,
//     before anything else, so a gateway that dies after it never delivers it again;
//   - a 4xx keeps the recipient pending; a 5xx fails it; a recipient still pending
//     once the entry is older than queue.lifetime fails as expired;
//   - failed recipients get the sender one DSN (queued as an entry of its own, made
//     durable before the recipients are marked reported); none for the null sender;
//   - a finished entry is removed; otherwise it is due again after the backoff
//     (queue.retry doubled per attempt, at most queue.max_retry) and the lease ends.
// One log line per attempt ("queue attempt") and per final outcome ("queue
// delivered", "queue failed", "queue expired"), each with the queue id the client got.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "conf/config.h"
#include "gateway/queue/queue_store.h"

namespace mailgate::session {

struct Runtime;

class QueueRunner : public std::enable_shared_from_this<QueueRunner> {
 public:
  // runtime: the snapshot in service at the time of the call (routing, directory,
  // host name); owner: this gateway's name in leases (host name, pid, start time).
  QueueRunner(std::shared_ptr<queue::QueueStore> store, conf::QueueConfig cfg,
              std::function<std::shared_ptr<const Runtime>()> runtime, std::string owner);
  ~QueueRunner();
  QueueRunner(const QueueRunner&) = delete;
  QueueRunner& operator=(const QueueRunner&) = delete;

  // The thread holds the runner alive until it ends (it may release the last
  // reference to a Runtime, and with it the runner's, on its own thread).
  void start();
  // Asks the thread to end after the delivery attempt in progress (never waits).
  void requestStop();
  // requestStop(), then waits at most `wait` for the thread to end (not on the
  // runner's own thread); false when it is still running.
  bool stop(std::chrono::milliseconds wait = std::chrono::milliseconds(5000));
  // Look for due entries now (an operator's "retry now", or a fresh entry).
  void wake();
  // One pass: claims the due entries and works them; returns how many it worked.
  size_t runOnce();

  const std::string& owner() const { return owner_; }
  queue::QueueStore& store() { return *store_; }

 private:
  void run();
  bool stopping();
  // Works one claimed entry to its next state; true when it queued a DSN (an entry
  // due now: the pass goes on to it).
  bool work(queue::QueueEntry e, const Runtime& rt);
  int64_t backoffMs(uint32_t attempts) const;

  std::shared_ptr<queue::QueueStore> store_;
  conf::QueueConfig cfg_;
  std::function<std::shared_ptr<const Runtime>()> runtime_;
  std::string owner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool started_ = false;
  bool woken_ = false;
  bool running_ = false;
  std::thread::id thread_id_;
};

}  // namespace mailgate::session
