#pragma once
// What happens to a quarantined message after the session: the retention sweep, and
// the release (an operator's decision through the admin endpoint).
//
// A release delivers the message itself, from the calling thread (the admin thread:
// blocking, never a reactor), to the storage node the routing map gives for each
// recipient now (the directory's answer for an alias, as at RCPT), over LMTP or SMTP
// as the node's `deliver` says; the submission listener's messages go to the relay.
// Exactly once: the release claims the entry first (a second release while one runs
// is refused), a recipient a node accepted is recorded in the entry before anything
// else, and the entry is removed only once every recipient was accepted. A
// recipient that failed keeps the entry for a later release, which skips the
// recipients already delivered.
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "filters/quarantine.h"

namespace mailgate::session {

struct Runtime;

struct ReleaseOutcome {
  enum class Status { kReleased, kPartial, kNotFound, kBusy, kError };
  Status status = Status::kError;
  std::vector<std::string> delivered;                       // recipients accepted by this release
  std::vector<std::pair<std::string, std::string>> failed;  // recipient, why (the node's reply)
  std::string error;                                        // kError: what went wrong
};

ReleaseOutcome releaseQuarantined(const Runtime& rt, const std::string& id);

// Deletes the entries older than the retention, at start and then every minute (or
// every half retention when that is shorter), on a thread of its own.
class QuarantineSweeper {
 public:
  QuarantineSweeper(std::shared_ptr<filters::QuarantineStore> store, std::chrono::milliseconds retention);
  ~QuarantineSweeper();
  void start();
  void stop();
  void sweepOnce();

 private:
  void run();
  std::shared_ptr<filters::QuarantineStore> store_;
  std::chrono::milliseconds retention_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool started_ = false;
  std::thread thread_;
};

}  // namespace mailgate::session
