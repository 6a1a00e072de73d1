// The scanner circuit breaker: closed -> open after N failures in a row (a success
// in between starts the count again), skips while open, one trial when the open
// time is over (its success closes, its failure opens again), results of an earlier
// state ignored, an abandoned or lost trial freed; thread-safe; one breaker per
// scanner name and endpoints, kept across reloads.
#include "filters/circuit_breaker.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace mailgate::filters {
namespace {

using namespace std::chrono_literals;
using State = CircuitBreaker::State;
const CircuitBreaker::Clock::time_point T0 = CircuitBreaker::Clock::now();

TEST(CircuitBreaker, OpensAfterFailuresInARow) {
  CircuitBreaker b(3, 10s);
  for (int i = 0; i < 2; i++) {
    auto t = b.admit(T0);
    ASSERT_TRUE(t.allowed);
    EXPECT_FALSE(b.failure(t, T0));
  }
  auto t = b.admit(T0);
  ASSERT_TRUE(t.allowed);
  EXPECT_TRUE(b.failure(t, T0));  // the third: opens, reported once
  EXPECT_EQ(b.state(T0), State::kOpen);
  EXPECT_EQ(b.openings(), 1u);
  auto s = b.admit(T0 + 5s);
  EXPECT_FALSE(s.allowed);
  EXPECT_EQ(b.skipped(), 1u);
  EXPECT_FALSE(b.failure(s, T0 + 5s));  // a skipped scan reports nothing
  EXPECT_EQ(b.openings(), 1u);
}

TEST(CircuitBreaker, SuccessResetsTheCount) {
  CircuitBreaker b(2, 10s);
  auto t1 = b.admit(T0);
  EXPECT_FALSE(b.failure(t1, T0));
  auto t2 = b.admit(T0);
  b.success(t2);
  auto t3 = b.admit(T0);
  EXPECT_FALSE(b.failure(t3, T0));
  EXPECT_EQ(b.state(T0), State::kClosed);
  auto t4 = b.admit(T0);
  EXPECT_TRUE(b.failure(t4, T0));
}

TEST(CircuitBreaker, OneTrialAfterTheOpenTime) {
  CircuitBreaker b(1, 10s);
  EXPECT_TRUE(b.failure(b.admit(T0), T0));
  EXPECT_FALSE(b.admit(T0 + 9s).allowed);
  EXPECT_EQ(b.state(T0 + 10s), State::kHalfOpen);
  auto trial = b.admit(T0 + 10s);
  ASSERT_TRUE(trial.allowed);
  EXPECT_TRUE(trial.trial);
  EXPECT_FALSE(b.admit(T0 + 10s).allowed);  // one trial at a time
  EXPECT_TRUE(b.success(trial));             // closes
  EXPECT_EQ(b.state(T0 + 10s), State::kClosed);
  auto t = b.admit(T0 + 10s);
  EXPECT_TRUE(t.allowed);
  EXPECT_FALSE(t.trial);
}

TEST(CircuitBreaker, FailedTrialOpensAgain) {
  CircuitBreaker b(1, 10s);
  b.failure(b.admit(T0), T0);
  auto trial = b.admit(T0 + 11s);
  ASSERT_TRUE(trial.trial);
  EXPECT_TRUE(b.failure(trial, T0 + 11s));
  EXPECT_EQ(b.openings(), 2u);
  EXPECT_EQ(b.state(T0 + 20s), State::kOpen);  // open for another 10 s from the trial's failure
  EXPECT_EQ(b.state(T0 + 21s), State::kHalfOpen);
}

TEST(CircuitBreaker, ResultsOfAnEarlierStateAreIgnored) {
  CircuitBreaker b(2, 10s);
  auto early = b.admit(T0);  // a slow scan started while closed
  b.failure(b.admit(T0), T0);
  EXPECT_TRUE(b.failure(b.admit(T0), T0));  // opens
  EXPECT_FALSE(b.success(early));            // its late success does not close it
  EXPECT_EQ(b.state(T0 + 1s), State::kOpen);
  auto trial = b.admit(T0 + 10s);
  EXPECT_FALSE(b.failure(early, T0 + 10s));  // nor does its failure open it again
  EXPECT_EQ(b.openings(), 1u);
  b.success(trial);
  EXPECT_EQ(b.state(T0 + 10s), State::kClosed);
}

TEST(CircuitBreaker, AbandonedTrialLetsAnotherOne) {
  CircuitBreaker b(1, 10s);
  b.failure(b.admit(T0), T0);
  auto trial = b.admit(T0 + 10s);
  ASSERT_TRUE(trial.trial);
  b.abandon(trial);  // its session closed
  auto again = b.admit(T0 + 10s);
  EXPECT_TRUE(again.allowed);
  EXPECT_TRUE(again.trial);
}

TEST(CircuitBreaker, LostTrialIsGivenUpAfterTheOpenTime) {
  CircuitBreaker b(1, 10s);
  b.failure(b.admit(T0), T0);
  ASSERT_TRUE(b.admit(T0 + 10s).trial);  // never reports
  EXPECT_FALSE(b.admit(T0 + 19s).allowed);
  EXPECT_TRUE(b.admit(T0 + 20s).trial);
}

TEST(CircuitBreaker, ConfigureKeepsTheState) {
  CircuitBreaker b(1, 10s);
  b.failure(b.admit(T0), T0);
  b.configure(5, 1s);
  EXPECT_EQ(b.state(T0 + 5s), State::kOpen);  // still open: its end was set when it opened
  EXPECT_EQ(b.state(T0 + 10s), State::kHalfOpen);
}

TEST(CircuitBreaker, ConcurrentFailuresOpenItOnce) {
  constexpr int kThreads = 8, kScans = 2000;
  CircuitBreaker b(5, std::chrono::hours(1));
  std::atomic<uint64_t> allowed{0}, opened{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; i++)
    threads.emplace_back([&] {
      for (int j = 0; j < kScans; j++) {
        auto t = b.admit();
        if (!t.allowed) continue;
        allowed++;
        if (b.failure(t)) opened++;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(opened.load(), 1u);
  EXPECT_EQ(b.openings(), 1u);
  EXPECT_GE(allowed.load(), 5u);
  EXPECT_EQ(allowed.load() + b.skipped(), uint64_t{kThreads} * kScans);
  EXPECT_EQ(b.state(), State::kOpen);
}

TEST(CircuitBreaker, ConcurrentMixedResultsStayConsistent) {
  // Successes and failures from many threads, with a short open time: whatever the
  // interleaving, a breaker ends closed after a run of successes.
  CircuitBreaker b(3, 1ms);
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; i++)
    threads.emplace_back([&, i] {
      for (int j = 0; j < 3000; j++) {
        auto t = b.admit();
        if (!t.allowed) continue;
        if ((i + j) % 3 == 0)
          b.success(t);
        else
          b.failure(t);
      }
    });
  for (auto& t : threads) t.join();
  for (int k = 0; k < 1000 && b.state() != State::kClosed; k++) {
    std::this_thread::sleep_for(2ms);
    auto t = b.admit();
    if (t.allowed) b.success(t);
  }
  EXPECT_EQ(b.state(), State::kClosed);
  EXPECT_GE(b.openings(), 1u);
}

TEST(ScannerBreaker, OnePerNameAndEndpointsWhileInUse) {
  auto a = scannerBreaker("av-reg", {"unix:/a"}, 5, 30s);
  auto same = scannerBreaker("av-reg", {"unix:/a"}, 3, 10s);  // a reload: same breaker, new thresholds
  EXPECT_EQ(a.get(), same.get());
  auto other = scannerBreaker("av-reg", {"unix:/b"}, 5, 30s);
  EXPECT_NE(a.get(), other.get());
  EXPECT_NE(a.get(), scannerBreaker("av-reg2", {"unix:/a"}, 5, 30s).get());
  // Threshold 3 now applies to the shared one.
  for (int i = 0; i < 2; i++) EXPECT_FALSE(a->failure(a->admit()));
  EXPECT_TRUE(a->failure(a->admit()));
  a->admit();  // skipped
  other->failure(other->admit());
  bool found = false;
  for (const auto& c : scannerBreakerCounts())
    if (c.scanner == "av-reg") {
      found = true;
      EXPECT_EQ(c.openings, 1u);  // both endpoints' breakers, summed
      EXPECT_EQ(c.skipped, 1u);
    }
  EXPECT_TRUE(found);
  CircuitBreaker* old = a.get();
  a.reset();
  same.reset();
  // No configuration holds it any more: a new one starts closed.
  auto fresh = scannerBreaker("av-reg", {"unix:/a"}, 5, 30s);
  EXPECT_EQ(fresh->state(), State::kClosed);
  (void)old;
}

}  // namespace
}  // namespace mailgate::filters
