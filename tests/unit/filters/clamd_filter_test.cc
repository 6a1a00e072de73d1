// The clamd filter against a fake connection host and executor (the test plays the
// reactor and clamd): a message over stream_max is not sent; an open breaker skips
// the scan at once with on_error; failures open the breaker and a verdict closes it;
// a connection lost mid-scan starts the stream again on the next endpoint; clamd's
// size-limit reply is oversize; each outcome lands in the session's scan results.
#include "filters/clamd_filter.h"

#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <thread>

#include "filters/scan_result.h"

namespace mailgate::filters {
namespace {

using namespace std::chrono_literals;

// Jobs and posts run when the test says so (run()).
struct FakeHost final : public ConnectionHost, public core::Executor {
  struct Conn {
    std::string address;
    ConnectionHandler* handler = nullptr;
    std::string written;
    bool open = true;
  };
  std::map<ConnectionId, Conn> conns;
  std::vector<std::string> refuse;  // open() fails at once for these
  ConnectionId next = 1;
  std::shared_ptr<std::deque<std::function<void()>>> queue = std::make_shared<std::deque<std::function<void()>>>();

  ConnectionId open(std::string_view address, std::chrono::milliseconds, ConnectionHandler* handler,
                    std::string* error) override {
    for (const auto& r : refuse)
      if (r == address) {
        *error = "refused";
        return 0;
      }
    conns[next] = Conn{std::string(address), handler, {}, true};
    return next++;
  }
  bool write(ConnectionId id, std::string_view bytes) override {
    auto it = conns.find(id);
    if (it == conns.end() || !it->second.open) return false;
    it->second.written.append(bytes);
    return true;
  }
  size_t queued(ConnectionId) const override { return 0; }
  void close(ConnectionId id) override {
    if (auto it = conns.find(id); it != conns.end()) it->second.open = false;
  }
  std::function<void(std::function<void()>)> poster() override {
    auto q = queue;
    return [q](std::function<void()> fn) { q->push_back(std::move(fn)); };
  }
  bool submit(std::function<void()> job, std::chrono::milliseconds) override {
    queue->push_back(std::move(job));
    return true;
  }
  void run() {
    while (!queue->empty()) {
      auto fn = std::move(queue->front());
      queue->pop_front();
      fn();
    }
  }
  Conn& last() { return conns.rbegin()->second; }
  ConnectionId lastId() const { return conns.rbegin()->first; }
};

struct Harness {
  FakeHost host;
  SessionFacts facts;
  std::vector<Resumer::Answer> answers;
  std::unique_ptr<Filter> filter;

  explicit Harness(ClamdOptions o, std::string message = "Subject: x\r\n\r\nhello\r\n") {
    facts.protocol = "smtp";
    facts.session_id = "s1";
    facts.message = std::make_shared<StringBody>(std::move(message));
    FilterServices services;
    services.content = &host;
    services.connections = &host;
    filter = ClamdFactory(std::move(o)).create(facts, services);
  }
  Verdict start() {
    auto post = std::make_shared<const Resumer::Post>(
        [this](uint64_t, Resumer::Answer a) { answers.push_back(std::move(a)); });
    return filter->onStage(Stage::kData, facts, Resumer(post, 1));
  }
  ConnectionHandler* handler() { return dynamic_cast<ConnectionHandler*>(filter.get()); }
  // The answer given through the resumer, applied to the facts.
  Verdict answer() {
    EXPECT_EQ(answers.size(), 1u);
    if (answers.empty()) return Verdict::of(Action::kPending);
    Verdict v = answers.front()(facts);
    answers.clear();
    return v;
  }
};

ClamdOptions options(std::vector<std::string> endpoints = {"unix:/a"}) {
  ClamdOptions o;
  o.name = "clamav";
  o.endpoints = std::move(endpoints);
  o.on_error = FailureAction::kAccept;
  return o;
}

TEST(ClamdFilter, OverStreamMaxIsOversizeWithoutSending) {
  ClamdOptions o = options();
  o.stream_max = 16;
  o.on_oversize = OversizeAction::kAcceptUnscanned;
  Harness h(std::move(o));
  Verdict v = h.start();
  EXPECT_EQ(v.action, Action::kContinue);
  EXPECT_TRUE(h.host.conns.empty());
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=unscanned(oversize)");
}

TEST(ClamdFilter, OverStreamMaxRejectedWhenSoConfigured) {
  ClamdOptions o = options();
  o.stream_max = 16;
  o.on_oversize = OversizeAction::kReject;
  Harness h(std::move(o));
  Verdict v = h.start();
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.code, 554);
  EXPECT_TRUE(h.host.conns.empty());
}

TEST(ClamdFilter, CleanScanRecordsClean) {
  Harness h(options());
  ASSERT_EQ(h.start().action, Action::kPending);
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=error(timeout)");  // until it answers
  h.handler()->onConnected(h.host.lastId());
  h.host.run();
  const std::string& w = h.host.last().written;
  ASSERT_GE(w.size(), 14u);
  EXPECT_EQ(w.substr(0, 10), std::string("zINSTREAM\0", 10));
  EXPECT_EQ(w.substr(w.size() - 4), std::string(4, '\0'));  // the terminator: the whole message went
  h.handler()->onData(h.host.lastId(), std::string_view("stream: OK\0", 11));
  EXPECT_EQ(h.answer().action, Action::kContinue);
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=clean");
}

TEST(ClamdFilter, SizeLimitReplyIsOversize) {
  ClamdOptions o = options();
  o.on_oversize = OversizeAction::kTempfail;
  Harness h(std::move(o));
  h.start();
  h.handler()->onConnected(h.host.lastId());
  h.host.run();
  h.handler()->onData(h.host.lastId(), std::string_view("INSTREAM size limit exceeded. ERROR\0", 36));
  EXPECT_EQ(h.answer().action, Action::kTempfail);
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=unscanned(oversize)");
}

TEST(ClamdFilter, ConnectionLostMidScanTriesTheNextEndpoint) {
  Harness h(options({"tcp:127.0.0.1:1", "unix:/b"}), std::string(300 * 1024, 'x'));
  h.start();
  const ConnectionId first = h.host.lastId();
  h.handler()->onConnected(first);
  h.host.run();
  EXPECT_GT(h.host.conns[first].written.size(), 64u * 1024);
  h.handler()->onClosed(first, ConnectionEnd::kError, "connection reset by peer");
  ASSERT_EQ(h.host.conns.size(), 2u);
  EXPECT_TRUE(h.answers.empty());
  const ConnectionId second = h.host.lastId();
  EXPECT_EQ(h.host.last().address, "unix:/b");
  h.handler()->onConnected(second);
  h.host.run();
  // The whole stream again, from the first octet: command, chunks, terminator.
  const std::string& w = h.host.conns[second].written;
  EXPECT_EQ(w.substr(0, 10), std::string("zINSTREAM\0", 10));
  EXPECT_EQ(w.size(), 10 + 300 * 1024 + 5 * 4 + 4);  // 5 chunks of at most 64K, each with its length
  h.handler()->onData(second, std::string_view("stream: OK\0", 11));
  EXPECT_EQ(h.answer().action, Action::kContinue);
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=clean");
}

TEST(ClamdFilter, LostOnTheLastEndpointIsOnError) {
  ClamdOptions o = options();
  o.on_error = FailureAction::kTempfail;
  Harness h(std::move(o));
  h.start();
  h.handler()->onConnected(h.host.lastId());
  h.host.run();
  h.handler()->onClosed(h.host.lastId(), ConnectionEnd::kClosed, "");
  EXPECT_EQ(h.answer().action, Action::kTempfail);
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=error(unavailable)");
}

TEST(ClamdFilter, ErrorReplyIsNotRetriedElsewhere) {
  Harness h(options({"unix:/a", "unix:/b"}));
  h.start();
  h.handler()->onConnected(h.host.lastId());
  h.host.run();
  h.handler()->onData(h.host.lastId(), std::string_view("Can't allocate memory ERROR\0", 28));
  EXPECT_EQ(h.host.conns.size(), 1u);
  EXPECT_EQ(h.answer().action, Action::kContinue);  // on_error: accept
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=error(scanner)");
}

TEST(ClamdFilter, FailuresOpenTheBreakerThenScansAreSkipped) {
  auto breaker = std::make_shared<CircuitBreaker>(2, std::chrono::hours(1));
  for (int i = 0; i < 2; i++) {
    ClamdOptions o = options({"unix:/down"});
    o.breaker = breaker;
    Harness h(std::move(o));
    h.host.refuse = {"unix:/down"};
    EXPECT_EQ(h.start().action, Action::kContinue);  // on_error: accept
    EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=error(unavailable)");
  }
  EXPECT_EQ(breaker->state(), CircuitBreaker::State::kOpen);
  ClamdOptions o = options({"unix:/down"});
  o.breaker = breaker;
  o.on_error = FailureAction::kTempfail;
  Harness h(std::move(o));
  EXPECT_EQ(h.start().action, Action::kTempfail);
  EXPECT_TRUE(h.host.conns.empty());  // not even tried
  EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=skipped(breaker)");
  EXPECT_EQ(breaker->skipped(), 1u);
}

TEST(ClamdFilter, DeadlineCountsAsAFailureAndAVerdictAsASuccess) {
  auto breaker = std::make_shared<CircuitBreaker>(1, 1ms);
  {
    ClamdOptions o = options();
    o.breaker = breaker;
    Harness h(std::move(o));
    ASSERT_EQ(h.start().action, Action::kPending);
    h.filter->cancel();  // what the chain does at the deadline
    EXPECT_EQ(h.filter->onError().action, Action::kContinue);
    EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=error(timeout)");
  }
  EXPECT_EQ(breaker->openings(), 1u);
  std::this_thread::sleep_for(5ms);
  {
    ClamdOptions o = options();
    o.breaker = breaker;
    Harness h(std::move(o));
    ASSERT_EQ(h.start().action, Action::kPending);  // the trial
    h.handler()->onConnected(h.host.lastId());
    h.host.run();
    h.handler()->onData(h.host.lastId(), std::string_view("stream: Eicar FOUND\0", 20));
    EXPECT_EQ(h.answer().action, Action::kReject);
    EXPECT_EQ(formatScanHeader(h.facts), "X-Mailgate-Scan: clamav=infected");
  }
  EXPECT_EQ(breaker->state(), CircuitBreaker::State::kClosed);
}

TEST(ClamdFilter, AbandonedTrialFreesItsPlace) {
  auto breaker = std::make_shared<CircuitBreaker>(1, 1ms);
  breaker->failure(breaker->admit());
  std::this_thread::sleep_for(5ms);
  {
    ClamdOptions o = options();
    o.breaker = breaker;
    Harness h(std::move(o));
    ASSERT_EQ(h.start().action, Action::kPending);  // the trial; the session then closes
    h.filter->cancel();
  }
  EXPECT_TRUE(breaker->admit().trial);
}

}  // namespace
}  // namespace mailgate::filters
