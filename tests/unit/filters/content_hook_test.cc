// A blocking content hook as a data-stage filter: it runs on the executor it was
// given (never inline), its verdict comes back through the resumer, an exception is
// its on_error (never an acceptance), a full executor queue answers on_error at
// once, and it does not run at other stages or without a message.
#include "filters/content_hook.h"

#include <gtest/gtest.h>

#include <deque>
#include <stdexcept>
#include <thread>

namespace mailgate::filters {
namespace {

class FixedHook final : public ContentHook {
 public:
  explicit FixedHook(Verdict v) : v_(std::move(v)) {}
  std::string_view name() const override { return "fixed"; }
  Verdict inspect(const SessionFacts& facts, const MessageBody& body) override {
    calls++;
    thread = std::this_thread::get_id();
    seen_from = facts.mail_path;
    std::string head;
    body.read(0, 7, &head);
    if (head == "THROW!!") throw std::runtime_error("scanner unreachable");
    return v_;
  }
  int calls = 0;
  std::thread::id thread;
  std::string seen_from;

 private:
  Verdict v_;
};

// Queues jobs; the test runs them on a thread of its own.
class QueueExecutor final : public core::Executor {
 public:
  bool submit(std::function<void()> job, std::chrono::milliseconds max_wait) override {
    if (full) return false;
    last_max_wait = max_wait;
    jobs.push_back(std::move(job));
    return true;
  }
  void runOnThread() {
    std::thread t([this] {
      for (auto& j : jobs) j();
    });
    t.join();
    jobs.clear();
  }
  std::deque<std::function<void()>> jobs;
  bool full = false;
  std::chrono::milliseconds last_max_wait{0};
};

struct HookTest : ::testing::Test {
  QueueExecutor exec;
  std::vector<Verdict> answers;
  std::shared_ptr<const Resumer::Post> post = std::make_shared<const Resumer::Post>(
      [this](uint64_t, Resumer::Answer a) { answers.push_back(a(facts)); });
  SessionFacts facts;
  ContentHookOptions opts;

  std::unique_ptr<Filter> make(std::shared_ptr<FixedHook> hook) {
    opts.deadline = std::chrono::milliseconds(1500);
    ContentHookFactory f(hook, opts);
    return f.create(facts, FilterServices{nullptr, &exec});
  }
};

TEST_F(HookTest, RunsOnTheContentExecutorAndAnswersThroughTheResumer) {
  Verdict rej = Verdict::of(Action::kReject, "Eicar-Signature");
  auto hook = std::make_shared<FixedHook>(rej);
  auto filter = make(hook);
  EXPECT_EQ(filter->stages(), stageBit(Stage::kData));
  EXPECT_EQ(filter->deadline(), std::chrono::milliseconds(1500));
  facts.mail_path = "<a@example.org>";
  facts.message = std::make_shared<StringBody>("Subject: x\r\n\r\nhello\r\n");
  Verdict v = filter->onStage(Stage::kData, facts, Resumer(post, 1));
  EXPECT_EQ(v.action, Action::kPending);
  EXPECT_EQ(hook->calls, 0);  // not inline
  EXPECT_EQ(exec.last_max_wait, std::chrono::milliseconds(1500));
  exec.runOnThread();
  EXPECT_EQ(hook->calls, 1);
  EXPECT_NE(hook->thread, std::this_thread::get_id());
  EXPECT_EQ(hook->seen_from, "<a@example.org>");
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].action, Action::kReject);
  EXPECT_EQ(answers[0].reason, "Eicar-Signature");
}

TEST_F(HookTest, ExceptionIsTheFailureActionNeverAcceptance) {
  auto filter = make(std::make_shared<FixedHook>(Verdict::next()));
  facts.message = std::make_shared<StringBody>("THROW!! and more");
  EXPECT_EQ(filter->onStage(Stage::kData, facts, Resumer(post, 1)).action, Action::kPending);
  exec.runOnThread();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].action, Action::kTempfail);
  EXPECT_NE(answers[0].reason.find("scanner unreachable"), std::string::npos);
}

TEST_F(HookTest, FullQueueAnswersTheFailureActionAtOnce) {
  opts.on_error = Verdict::of(Action::kReject, "x");
  auto filter = make(std::make_shared<FixedHook>(Verdict::next()));
  exec.full = true;
  facts.message = std::make_shared<StringBody>("m");
  Verdict v = filter->onStage(Stage::kData, facts, Resumer(post, 1));
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.reason, "content executor queue full");
}

TEST_F(HookTest, NoMessageNoScan) {
  auto hook = std::make_shared<FixedHook>(Verdict::of(Action::kReject));
  auto filter = make(hook);
  EXPECT_EQ(filter->onStage(Stage::kData, facts, Resumer(post, 1)).action, Action::kContinue);
  EXPECT_TRUE(exec.jobs.empty());
}

}  // namespace
}  // namespace mailgate::filters
