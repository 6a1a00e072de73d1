#pragma once
// A scanner's circuit breaker. After `failures` failures in a row (no answer: an
// endpoint down, a protocol error, the scan deadline; a verdict of any kind is a
// success) it opens: for `open` every scan is skipped at once and the scanner's
// on_error applies. After that one scan is let through as a trial (half-open): its
// success closes the breaker, its failure opens it again for another `open`. A trial
// that never reports (its session closed) is given up after `open`, and another one
// may start.
//
// One breaker per scanner, process-wide: sessions on every reactor share it, and a
// reload keeps it while the scanner's name and endpoints are the same
// (scannerBreaker()). Thread-safe. The clock is passed in, for tests.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mailgate::filters {

class CircuitBreaker {
 public:
  using Clock = std::chrono::steady_clock;
  enum class State : uint8_t { kClosed, kOpen, kHalfOpen };

  // What admit() gives a scan; report its end with success() or failure(), or
  // abandon() it. A ticket of an earlier state (the breaker opened or closed since)
  // is ignored when it reports: only the scans of the current state count.
  struct Ticket {
    bool allowed = false;  // false: skip the scan (the breaker is open)
    bool trial = false;    // the half-open trial
    uint64_t generation = 0;
  };

  CircuitBreaker(uint32_t failures, std::chrono::milliseconds open);

  // Whether a scan may run now.
  Ticket admit(Clock::time_point now = Clock::now());
  // The scan got an answer from the scanner (clean, infected, refused as too long...).
  // True when this was the trial and it closed the breaker (log it).
  bool success(const Ticket& t);
  // The scan failed. True when this failure opened the breaker (log it once).
  bool failure(const Ticket& t, Clock::time_point now = Clock::now());
  // The scan ended without a result (cancelled): a trial's place is freed.
  void abandon(const Ticket& t);

  State state(Clock::time_point now = Clock::now()) const;
  // A reload may change the thresholds; the state is kept.
  void configure(uint32_t failures, std::chrono::milliseconds open);

  // Counters for /metrics.
  uint64_t openings() const { return openings_.load(std::memory_order_relaxed); }
  uint64_t skipped() const { return skipped_.load(std::memory_order_relaxed); }

 private:
  void openLocked(Clock::time_point now);

  mutable std::mutex mu_;
  uint32_t threshold_;
  std::chrono::milliseconds open_;
  State state_ = State::kClosed;
  uint32_t consecutive_ = 0;
  uint64_t generation_ = 1;
  Clock::time_point open_until_{};
  bool trial_running_ = false;
  Clock::time_point trial_started_{};
  std::atomic<uint64_t> openings_{0};
  std::atomic<uint64_t> skipped_{0};
};

std::string_view breakerStateName(CircuitBreaker::State s);

// The process-wide breaker of a scanner: the same one for the same name and
// endpoints (across reloads, while some configuration still uses it), with the
// thresholds of the latest configuration.
std::shared_ptr<CircuitBreaker> scannerBreaker(const std::string& scanner, const std::vector<std::string>& endpoints,
                                               uint32_t failures, std::chrono::milliseconds open);

// The counters of the breakers in use, by scanner name (summed while a reload's old
// and new endpoints both have one), sorted by name, for /metrics.
struct BreakerCounts {
  std::string scanner;
  uint64_t openings = 0;
  uint64_t skipped = 0;
  // Now: open if any of the name's breakers is, else half-open if any is, else closed.
  CircuitBreaker::State state = CircuitBreaker::State::kClosed;
};
std::vector<BreakerCounts> scannerBreakerCounts();

}  // namespace mailgate::filters
