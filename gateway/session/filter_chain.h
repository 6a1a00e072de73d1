#pragma once
// Runs a session's filters at one stage, alike for IMAP, POP3 and SMTP. Filters run
// in order; the first terminal verdict ends the stage. A pending filter holds the
// session's input (the host's pipelined bytes stay within its own bounds), arms the
// filter's deadline and waits for its answer, which comes back through the reactor
// (ChainHost::chainPoster). At the deadline the filter's failure action applies and
// its work is cancelled; a late answer is dropped and counted. Closing the session
// cancels the pending step.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "filters/filter.h"

namespace mailgate::session {

struct ScannerStats;

// Process-wide counters for /metrics.
struct ChainStats {
  std::atomic<uint64_t> pending{0};       // asynchronous steps started
  std::atomic<uint64_t> timeouts{0};      // steps whose deadline passed
  std::atomic<uint64_t> late_answers{0};  // answers after the deadline, a cancel or a newer step
  std::atomic<uint64_t> cancelled{0};     // steps cancelled by the session's end
  std::atomic<uint64_t> refusals{0};      // terminal verdicts other than quarantine
  std::atomic<uint64_t> delays{0};        // tarpit delays served
  std::atomic<uint64_t> bad_text{0};      // verdict texts refused (CR/LF/NUL/control)
};
ChainStats& chainStats();

class ChainHost {
 public:
  virtual ~ChainHost() = default;
  virtual uint64_t chainNow() const = 0;
  // Hold the client's input while a step waits (chainDone() releases it).
  virtual void chainHold() = 0;
  // Wake onTimer() at this time (0: no timer).
  virtual void chainTimer(uint64_t at_ms) = 0;
  // Thread-safe: posts an answer to the session's reactor, where it reaches
  // FilterChain::resume() if the session still exists (else it is dropped and counted).
  virtual std::shared_ptr<const filters::Resumer::Post> chainPoster() = 0;
  // The stage is over: continue, or a terminal verdict (text validated, ref set).
  // The host reads the client again when it is ready to.
  virtual void chainDone(filters::Stage stage, filters::Verdict verdict) = 0;
};

class FilterChain {
 public:
  explicit FilterChain(ChainHost& host) : host_(host) {}
  FilterChain(const FilterChain&) = delete;
  FilterChain& operator=(const FilterChain&) = delete;

  void add(std::unique_ptr<filters::Filter> f) { filters_.push_back(std::move(f)); }
  void add(std::vector<std::unique_ptr<filters::Filter>> fs) {
    for (auto& f : fs) filters_.push_back(std::move(f));
  }
  size_t size() const { return filters_.size(); }
  // Whether any filter runs at this stage.
  bool wants(filters::Stage stage) const;

  // Runs the stage; chainDone() follows, before run() returns when no filter waits.
  // Returns true when the stage ended within this call. `facts` must outlive the step.
  bool run(filters::Stage stage, filters::SessionFacts& facts);
  bool busy() const { return state_ != State::kIdle; }
  // From the reactor: the answer of the step `token`.
  void resume(uint64_t token, filters::Resumer::Answer answer);
  // The host's timer fired (deadline or end of a delay).
  void onTimer(uint64_t now_ms);
  uint64_t timerAt() const { return state_ == State::kIdle ? 0 : wake_at_; }
  // An event (filters::EventKind) for every filter, in order; the first terminal answer
  // wins, else the longest delay, else continue. Synchronous.
  filters::Verdict notify(const filters::Event& event, filters::SessionFacts& facts);
  // The session ends: the pending step is cancelled, nothing more is reported.
  void cancel();
  // Headers added at the data stage (add_header verdicts), taken once.
  std::vector<std::string> takeHeaders() { return std::move(headers_); }
  // The message a data-stage filter replaced the spooled one with (null: none), taken once.
  std::shared_ptr<const filters::MessageBody> takeReplacement() { return std::move(replacement_); }

 private:
  enum class State { kIdle, kRunning, kPending, kDelay };
  void step();
  // false when the chain must wait (pending, delay) or has finished.
  bool apply(filters::Verdict v);
  void finish(filters::Verdict v);
  // Data stage: the step of filters_[index_] ended; a scanner's outcome (the one it
  // recorded in the facts) and the step's duration go to its ScannerStats.
  void countScan();

  ChainHost& host_;
  std::vector<std::unique_ptr<filters::Filter>> filters_;
  std::shared_ptr<const filters::Resumer::Post> poster_;
  filters::SessionFacts* facts_ = nullptr;
  filters::Stage stage_ = filters::Stage::kConnect;
  size_t index_ = 0;
  State state_ = State::kIdle;
  uint64_t token_ = 0;
  uint64_t wake_at_ = 0;
  uint64_t step_started_ = 0;                // chainNow() when the current step began
  std::vector<ScannerStats*> scanner_stats_;  // by filter index, resolved on first use
  bool held_ = false;
  std::vector<std::string> headers_;
  std::shared_ptr<const filters::MessageBody> replacement_;
};

}  // namespace mailgate::session
