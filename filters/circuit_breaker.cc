#include "filters/circuit_breaker.h"

#include <algorithm>
#include <map>

namespace mailgate::filters {

CircuitBreaker::CircuitBreaker(uint32_t failures, std::chrono::milliseconds open)
    : threshold_(std::max<uint32_t>(failures, 1)), open_(open) {}

void CircuitBreaker::configure(uint32_t failures, std::chrono::milliseconds open) {
  std::lock_guard<std::mutex> g(mu_);
  threshold_ = std::max<uint32_t>(failures, 1);
  open_ = open;
}

CircuitBreaker::Ticket CircuitBreaker::admit(Clock::time_point now) {
  std::lock_guard<std::mutex> g(mu_);
  if (state_ == State::kOpen && now >= open_until_) {
    state_ = State::kHalfOpen;
    generation_++;
    trial_running_ = false;
  }
  if (state_ == State::kHalfOpen && trial_running_ && now - trial_started_ >= open_)
    trial_running_ = false;  // the trial never reported: another one may start
  switch (state_) {
    case State::kClosed:
      return Ticket{true, false, generation_};
    case State::kHalfOpen:
      if (!trial_running_) {
        trial_running_ = true;
        trial_started_ = now;
        return Ticket{true, true, generation_};
      }
      break;
    case State::kOpen:
      break;
  }
  skipped_.fetch_add(1, std::memory_order_relaxed);
  return Ticket{false, false, generation_};
}

bool CircuitBreaker::success(const Ticket& t) {
  if (!t.allowed) return false;
  std::lock_guard<std::mutex> g(mu_);
  if (t.generation != generation_) return false;
  consecutive_ = 0;
  if (state_ != State::kHalfOpen || !t.trial) return false;
  state_ = State::kClosed;
  generation_++;
  trial_running_ = false;
  return true;
}

bool CircuitBreaker::failure(const Ticket& t, Clock::time_point now) {
  if (!t.allowed) return false;
  std::lock_guard<std::mutex> g(mu_);
  if (t.generation != generation_) return false;
  if (state_ == State::kHalfOpen) {
    if (!t.trial) return false;
    openLocked(now);
    return true;
  }
  if (state_ != State::kClosed) return false;
  if (++consecutive_ < threshold_) return false;
  openLocked(now);
  return true;
}

void CircuitBreaker::abandon(const Ticket& t) {
  if (!t.allowed || !t.trial) return;
  std::lock_guard<std::mutex> g(mu_);
  if (t.generation == generation_ && state_ == State::kHalfOpen) trial_running_ = false;
}

void CircuitBreaker::openLocked(Clock::time_point now) {
  state_ = State::kOpen;
  generation_++;
  consecutive_ = 0;
  trial_running_ = false;
  open_until_ = now + open_;
  openings_.fetch_add(1, std::memory_order_relaxed);
}

CircuitBreaker::State CircuitBreaker::state(Clock::time_point now) const {
  std::lock_guard<std::mutex> g(mu_);
  if (state_ == State::kOpen && now >= open_until_) return State::kHalfOpen;
  return state_;
}

std::string_view breakerStateName(CircuitBreaker::State s) {
  switch (s) {
    case CircuitBreaker::State::kClosed:
      return "closed";
    case CircuitBreaker::State::kOpen:
      return "open";
    case CircuitBreaker::State::kHalfOpen:
      return "half-open";
  }
  return "closed";
}

namespace {
struct Registry {
  std::mutex mu;
  // Keyed by name and endpoints; a breaker lives while a configuration's factory holds it.
  std::map<std::pair<std::string, std::vector<std::string>>, std::weak_ptr<CircuitBreaker>> breakers;
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

std::shared_ptr<CircuitBreaker> scannerBreaker(const std::string& scanner, const std::vector<std::string>& endpoints,
                                               uint32_t failures, std::chrono::milliseconds open) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  for (auto it = r.breakers.begin(); it != r.breakers.end();)
    it = it->second.expired() ? r.breakers.erase(it) : std::next(it);
  auto& slot = r.breakers[{scanner, endpoints}];
  if (auto b = slot.lock()) {
    b->configure(failures, open);
    return b;
  }
  auto b = std::make_shared<CircuitBreaker>(failures, open);
  slot = b;
  return b;
}

std::vector<BreakerCounts> scannerBreakerCounts() {
  std::vector<BreakerCounts> out;
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  for (const auto& [key, weak] : r.breakers) {
    auto b = weak.lock();
    if (!b) continue;
    if (out.empty() || out.back().scanner != key.first) out.push_back(BreakerCounts{key.first, 0, 0, {}});
    out.back().openings += b->openings();
    out.back().skipped += b->skipped();
    const CircuitBreaker::State st = b->state();
    if (st == CircuitBreaker::State::kOpen ||
        (st == CircuitBreaker::State::kHalfOpen && out.back().state == CircuitBreaker::State::kClosed))
      out.back().state = st;
  }
  return out;
}

}  // namespace mailgate::filters
