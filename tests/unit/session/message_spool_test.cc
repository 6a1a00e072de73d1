// MessageSpool: memory up to the bound, then an anonymous file; the content reads
// back identical whatever the write pattern.
#include "gateway/session/message_spool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gateway/io/worker_pool.h"

namespace mailgate::session {
namespace {

std::string pattern(size_t n) {
  std::string s;
  s.reserve(n);
  for (size_t i = 0; i < n; ++i) s += static_cast<char>('a' + (i * 7 + i / 13) % 26);
  return s;
}

std::string readAll(MessageSpool& sp, size_t chunk) {
  std::string out, piece;
  for (uint64_t off = 0; off < sp.size(); off += chunk) {
    EXPECT_TRUE(sp.read(off, chunk, &piece));
    out += piece;
  }
  return out;
}

TEST(MessageSpool, SmallMessageStaysInMemory) {
  MessageSpool sp(1024, "/tmp");
  sp.write("Subject: x\r\n\r\nhi\r\n");
  ASSERT_TRUE(sp.flush());
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(sp.memory(), "Subject: x\r\n\r\nhi\r\n");
  EXPECT_EQ(sp.tail(), "\r\n");
  EXPECT_EQ(sp.size(), 18u);
}

TEST(MessageSpool, LargeMessageGoesToFileAndReadsBack) {
  for (size_t step : {1u, 7u, 4096u, 65536u, 300000u}) {
    MessageSpool sp(10000, "/tmp");
    const std::string data = pattern(1'000'003);
    for (size_t i = 0; i < data.size(); i += step) sp.write(std::string_view(data).substr(i, step));
    ASSERT_TRUE(sp.flush()) << sp.error();
    EXPECT_TRUE(sp.inFile());
    EXPECT_EQ(sp.size(), data.size());
    EXPECT_EQ(sp.tail(), data.substr(data.size() - 2));
    EXPECT_EQ(readAll(sp, 65536), data) << "step " << step;
    EXPECT_EQ(readAll(sp, 999), data) << "step " << step;
  }
}

TEST(MessageSpool, ZeroMemoryAlwaysUsesAFile) {
  MessageSpool sp(0, "/tmp");
  sp.write("x");
  ASSERT_TRUE(sp.flush());
  EXPECT_TRUE(sp.inFile());
  EXPECT_EQ(readAll(sp, 10), "x");
  EXPECT_EQ(sp.tail(), "x");
}

TEST(MessageSpool, ClearReleasesAndRestarts) {
  MessageSpool sp(16, "/tmp");
  sp.write(pattern(100));
  ASSERT_TRUE(sp.flush());
  EXPECT_TRUE(sp.inFile());
  sp.clear();
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(sp.size(), 0u);
  EXPECT_EQ(sp.tail(), "");
  sp.write("ab");
  ASSERT_TRUE(sp.flush());
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(sp.memory(), "ab");
}

TEST(MessageSpool, UnusableDirectoryFailsCleanly) {
  MessageSpool sp(4, "/nonexistent-spool-dir");
  sp.write("0123456789");
  EXPECT_TRUE(sp.failed());
  EXPECT_FALSE(sp.flush());
  EXPECT_NE(sp.error().find("/nonexistent-spool-dir"), std::string::npos) << sp.error();
  EXPECT_EQ(sp.size(), 10u);  // counted, not kept
}

TEST(MessageSpool, TailTracksSingleOctetWrites) {
  MessageSpool sp(1024, "/tmp");
  sp.write("a");
  EXPECT_EQ(sp.tail(), "a");
  sp.write("\r");
  EXPECT_EQ(sp.tail(), "a\r");
  sp.write("\n");
  EXPECT_EQ(sp.tail(), "\r\n");
}

// The asynchronous mode, as a session uses it: a real spool thread, and the test's
// thread as the owner (the reactor) that runs what is posted back to it.
class AsyncSpool : public ::testing::Test {
 protected:
  MessageSpool::Async io() {
    return {[this](std::function<void()> job) {
              if (refuse_) return false;
              jobs_++;
              return pool_.submit(std::move(job));
            },
            [this](std::function<void()> fn) {
              std::lock_guard g(mu_);
              posted_.push_back(std::move(fn));
            }};
  }
  // Runs posted answers on this thread until pred() holds (or 10 s went by).
  template <typename Pred>
  bool runUntil(Pred pred) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::vector<std::function<void()>> fns;
      {
        std::lock_guard g(mu_);
        fns.swap(posted_);
      }
      if (fns.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      for (auto& f : fns) f();
    }
    return true;
  }
  // Reads the whole spool back the way a session does: fetch, wait, fetch again.
  std::string fetchAll(MessageSpool& sp, size_t chunk) {
    std::string out, piece;
    for (uint64_t off = 0; off < sp.size(); off += chunk) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, sp.size() - off));
      bool ready = false;
      auto r = sp.fetch(off, n, &piece, [&] { ready = true; });
      if (r == MessageSpool::Fetch::kPending) {
        EXPECT_TRUE(runUntil([&] { return ready; }));
        r = sp.fetch(off, n, &piece, [] {});
      }
      EXPECT_EQ(r, MessageSpool::Fetch::kDone) << sp.error();
      out += piece;
    }
    return out;
  }
  bool flushAndWait(MessageSpool& sp) {
    bool done = false;
    if (sp.flushAsync([&] { done = true; })) return true;
    return runUntil([&] { return done; });
  }

  io::WorkerPool pool_{"spool", 1, 64};
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
  std::atomic<int> jobs_{0};
  bool refuse_ = false;
};

TEST_F(AsyncSpool, MemorySpoolNeverLeavesTheOwner) {
  MessageSpool sp(1024, "/tmp");
  sp.setAsync(io());
  sp.write("Subject: x\r\n\r\nhi\r\n");
  EXPECT_TRUE(sp.flushAsync([] { ADD_FAILURE() << "no wait expected"; }));
  std::string out;
  EXPECT_EQ(sp.fetch(0, 100, &out, [] { ADD_FAILURE() << "no wait expected"; }), MessageSpool::Fetch::kDone);
  EXPECT_EQ(out, "Subject: x\r\n\r\nhi\r\n");
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(jobs_.load(), 0);
}

TEST_F(AsyncSpool, LargeMessageIsWrittenAndReadOnTheSpoolThread) {
  for (size_t step : {7u, 4096u, 65536u, 300000u}) {
    jobs_ = 0;
    MessageSpool sp(10000, "/tmp");
    sp.setAsync(io());
    const std::string data = pattern(1'000'003);
    for (size_t i = 0; i < data.size(); i += step) {
      sp.write(std::string_view(data).substr(i, step));
      runUntil([&] { return !sp.congested(); });  // as a session does: pause, then go on
    }
    EXPECT_GT(jobs_.load(), 0);
    ASSERT_TRUE(flushAndWait(sp));
    ASSERT_FALSE(sp.failed()) << sp.error();
    EXPECT_TRUE(sp.inFile());
    EXPECT_EQ(sp.size(), data.size());
    EXPECT_EQ(fetchAll(sp, 65536), data) << "step " << step;
    EXPECT_EQ(readAll(sp, 999), data) << "step " << step;  // the hooks' synchronous read
  }
}

TEST_F(AsyncSpool, WritesAboveTheBoundCongestUntilTheThreadCatchesUp) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  ASSERT_TRUE(pool_.submit([open] { open.wait(); }));  // the spool thread is busy
  MessageSpool sp(0, "/tmp");
  sp.setAsync(io());
  int drained = 0;
  sp.onDrained([&] { drained++; });
  const std::string data = pattern(MessageSpool::kMaxInflight + 200000);
  for (size_t i = 0; i < data.size(); i += 4096) sp.write(std::string_view(data).substr(i, 4096));
  EXPECT_TRUE(sp.congested());
  gate.set_value();
  ASSERT_TRUE(runUntil([&] { return drained > 0; }));
  EXPECT_FALSE(sp.congested());
  EXPECT_EQ(drained, 1);
  ASSERT_TRUE(flushAndWait(sp));
  EXPECT_EQ(fetchAll(sp, 65536), data);
}

TEST_F(AsyncSpool, UnusableDirectoryFailsAtTheEnd) {
  MessageSpool sp(4, "/nonexistent-spool-dir");
  sp.setAsync(io());
  sp.write("0123456789");
  EXPECT_FALSE(sp.failed());  // the file is made on the spool thread
  ASSERT_TRUE(flushAndWait(sp));
  EXPECT_TRUE(sp.failed());
  EXPECT_FALSE(sp.noSpace());
  EXPECT_NE(sp.error().find("/nonexistent-spool-dir"), std::string::npos) << sp.error();
  std::string out;
  EXPECT_EQ(sp.fetch(0, 10, &out, [] {}), MessageSpool::Fetch::kError);
}

TEST_F(AsyncSpool, FullSpoolQueueFailsTheMessage) {
  MessageSpool sp(0, "/tmp");
  sp.setAsync(io());
  refuse_ = true;
  sp.write(pattern(70000));
  EXPECT_TRUE(sp.failed());
  EXPECT_TRUE(sp.flushAsync([] {}));
  EXPECT_NE(sp.error().find("queue full"), std::string::npos) << sp.error();
}

TEST_F(AsyncSpool, AnswersForClearedContentAreDropped) {
  MessageSpool sp(0, "/tmp");
  sp.setAsync(io());
  int drained = 0;
  sp.onDrained([&] { drained++; });
  sp.write(pattern(MessageSpool::kMaxInflight + 100000));
  EXPECT_TRUE(sp.congested());
  bool flushed = false;
  EXPECT_FALSE(sp.flushAsync([&] { flushed = true; }));
  sp.clear();  // RSET, or the session ends: the owner is told it need not wait
  EXPECT_EQ(drained, 1);
  EXPECT_FALSE(sp.congested());
  sp.write("next");
  pool_.stop();  // every job has run and posted its answer
  runUntil([&] {
    std::lock_guard g(mu_);
    return posted_.empty();
  });
  EXPECT_FALSE(flushed);
  EXPECT_EQ(drained, 1);
  EXPECT_EQ(sp.size(), 4u);
  EXPECT_EQ(sp.memory(), "next");
  EXPECT_FALSE(sp.failed());
}

}  // namespace
}  // namespace mailgate::session
