#include "gateway/io/ring.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <future>
#include <map>
#include <thread>

namespace mailgate::io {
namespace {

constexpr unsigned kSmall = 8;  // a small ring: easy to fill
constexpr uint64_t kRead = 1001;
constexpr uint64_t kTimeout = 1002;
constexpr uint64_t kNop = 7;

void fillWithNops(Ring& ring, unsigned n) {
  for (unsigned i = 0; i < n; i++) {
    io_uring_sqe* s = io_uring_get_sqe(ring.raw());  // no submit: the queue fills up
    ASSERT_NE(s, nullptr);
    io_uring_prep_nop(s);
    io_uring_sqe_set_data64(s, kNop);
  }
}

// A read of an empty pipe linked to a 20 ms timeout: only the link ends the read.
void prepReadWithTimeout(io_uring_sqe** chain, int fd, char* buf, __kernel_timespec* ts) {
  io_uring_prep_read(chain[0], fd, buf, 1, 0);
  chain[0]->flags |= IOSQE_IO_LINK;
  io_uring_sqe_set_data64(chain[0], kRead);
  io_uring_prep_link_timeout(chain[1], ts, 0);
  io_uring_sqe_set_data64(chain[1], kTimeout);
}

// Submits and collects completions by user_data until `want` tagged ones arrived or 5 s.
std::multimap<uint64_t, int> collect(Ring& ring, size_t want_tagged) {
  std::multimap<uint64_t, int> got;
  size_t tagged = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  EXPECT_GE(ring.submitAndWait(0), 0);
  while (tagged < want_tagged && std::chrono::steady_clock::now() < deadline) {
    __kernel_timespec ts{0, 50 * 1000 * 1000};
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe_timeout(ring.raw(), &cqe, &ts) != 0 || !cqe) continue;
    got.emplace(cqe->user_data, cqe->res);
    if (cqe->user_data != kNop) tagged++;
    io_uring_cqe_seen(ring.raw(), cqe);
  }
  return got;
}

class RingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = ring_.init(kSmall);
    if (!r) GTEST_SKIP() << "io_uring unavailable: " << r.error();
    ASSERT_EQ(::pipe(pipe_), 0);
  }
  void TearDown() override {
    ring_.close();  // cancels the reads still waiting
    for (int fd : pipe_)
      if (fd >= 0) ::close(fd);
  }
  Ring ring_;
  int pipe_[2] = {-1, -1};
  char buf_[1] = {0};
  __kernel_timespec ts_{0, 20 * 1000 * 1000};
};

TEST_F(RingTest, LinkedPairAtTheEndOfAFullQueueKeepsItsTimeout) {
  fillWithNops(ring_, kSmall - 1);  // one free entry: the pair does not fit
  io_uring_sqe* chain[2];
  ring_.sqes(2, chain);
  EXPECT_EQ(ring_.sq_full_submits.load(), 1u);  // the NOPs went first, alone
  EXPECT_EQ(ring_.backlog(), 0u);
  prepReadWithTimeout(chain, pipe_[0], buf_, &ts_);
  auto got = collect(ring_, 2);
  EXPECT_EQ(got.count(kNop), kSmall - 1);
  ASSERT_EQ(got.count(kRead), 1u);
  ASSERT_EQ(got.count(kTimeout), 1u);
  EXPECT_EQ(got.find(kRead)->second, -ECANCELED);  // ended by its linked timeout
  EXPECT_EQ(got.find(kTimeout)->second, -ETIME);
}

TEST_F(RingTest, LinkedPairWithRoomNeedsNoSubmit) {
  fillWithNops(ring_, kSmall - 2);
  io_uring_sqe* chain[2];
  ring_.sqes(2, chain);
  EXPECT_EQ(ring_.sq_full_submits.load(), 0u);
  prepReadWithTimeout(chain, pipe_[0], buf_, &ts_);
  auto got = collect(ring_, 2);
  ASSERT_EQ(got.count(kRead), 1u);
  EXPECT_EQ(got.find(kRead)->second, -ECANCELED);
  EXPECT_EQ(got.find(kTimeout)->second, -ETIME);
}

// The kernel refuses the submit (here: a single-issuer ring used from another thread,
// -EEXIST; in production -EBUSY or -EAGAIN). sqe() must return, not spin on the submit.
TEST_F(RingTest, FullQueueWhoseSubmitFailsDoesNotSpin) {
  fillWithNops(ring_, kSmall);
  std::promise<io_uring_sqe*> done;
  auto answer = done.get_future();
  std::thread other([&] { done.set_value(ring_.sqe()); });
  bool returned = answer.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  if (!returned) {
    other.detach();  // spinning: fail rather than hang the suite
    FAIL() << "Ring::sqe() spins on a full submission queue";
  }
  other.join();
  io_uring_sqe* s = answer.get();
  ASSERT_NE(s, nullptr);
  if (ring_.sq_submit_errors.load() == 0) GTEST_SKIP() << "this kernel let another thread submit";
  EXPECT_EQ(ring_.backlog(), 1u);
  EXPECT_EQ(ring_.sq_backlogged.load(), 1u);
  io_uring_prep_nop(s);
  io_uring_sqe_set_data64(s, 42);
  auto got = collect(ring_, 1);  // the owner's wait moves the parked entry in
  EXPECT_EQ(ring_.backlog(), 0u);
  EXPECT_EQ(got.count(kNop), kSmall);
  ASSERT_EQ(got.count(42), 1u);
  EXPECT_EQ(got.find(42)->second, 0);
}

TEST_F(RingTest, ParkedChainReachesTheKernelWhole) {
  fillWithNops(ring_, kSmall);
  io_uring_sqe* chain[2] = {nullptr, nullptr};
  std::thread other([&] { ring_.sqes(2, chain); });  // its submit fails: both are parked
  other.join();
  if (ring_.sq_submit_errors.load() == 0) GTEST_SKIP() << "this kernel let another thread submit";
  ASSERT_EQ(ring_.backlog(), 2u);
  prepReadWithTimeout(chain, pipe_[0], buf_, &ts_);
  // More parked entries after the chain, more than the queue holds at once.
  for (unsigned i = 0; i < kSmall; i++) {
    io_uring_sqe* s = ring_.sqe();
    io_uring_prep_nop(s);
    io_uring_sqe_set_data64(s, kNop);
  }
  EXPECT_EQ(ring_.backlog(), 2u + kSmall);
  auto got = collect(ring_, 2);
  EXPECT_EQ(ring_.backlog(), 0u);
  EXPECT_EQ(got.count(kNop), 2u * kSmall);
  ASSERT_EQ(got.count(kRead), 1u);
  EXPECT_EQ(got.find(kRead)->second, -ECANCELED);
  EXPECT_EQ(got.find(kTimeout)->second, -ETIME);
}

}  // namespace
}  // namespace mailgate::io
