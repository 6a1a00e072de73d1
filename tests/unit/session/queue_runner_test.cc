// The exception queue's runner against an in-memory store and LMTP nodes on loopback:
// what it records, in which order, what it retries, fails, expires and reports.
#include "gateway/session/queue_runner.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "gateway/core/log.h"
#include "gateway/session/runtime.h"

using mailgate::filters::StringBody;

namespace mailgate::session {
namespace {

using queue::QueueEntry;
using queue::QueueRcpt;
using queue::QueueStore;
using queue::RcptState;

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string readAll(const filters::MessageBody& b) {
  std::string out;
  b.read(0, static_cast<size_t>(b.size()), &out);
  return out;
}

// The store: a map, with every update kept for the test to look at.
class FakeStore final : public QueueStore {
 public:
  struct Update {
    QueueEntry entry;
    bool release;
  };
  std::mutex mu;
  std::map<std::string, QueueEntry> entries;
  std::map<std::string, std::string> bodies;
  std::vector<Update> updates;
  std::function<void(const QueueEntry&)> on_update;  // called with the entry written
  Put put_result = Put::kStored;
  bool fail_claim = false;
  bool lose_lease = false;

  std::string_view kind() const override { return "fake"; }
  Put put(QueueEntry e, const filters::MessageBody& body, std::string* error) override {
    std::lock_guard<std::mutex> g(mu);
    if (put_result != Put::kStored) {
      *error = "put refused by the test";
      return put_result;
    }
    e.size = body.size();
    bodies[e.id] = readAll(body);
    entries[e.id] = std::move(e);
    return Put::kStored;
  }
  Result<std::vector<QueueEntry>> claimDue(const std::string& owner, int64_t now_ms, int64_t lease_ms,
                                           size_t limit) override {
    std::lock_guard<std::mutex> g(mu);
    if (fail_claim) return Error{"the store is down"};
    std::vector<QueueEntry> out;
    for (auto& [id, e] : entries) {
      if (out.size() >= limit) break;
      if (e.next_ms > now_ms || e.lease_until_ms >= now_ms) continue;
      e.lease_owner = owner;
      e.lease_until_ms = now_ms + lease_ms;
      out.push_back(e);
    }
    return out;
  }
  Result<std::shared_ptr<const filters::MessageBody>> body(const std::string& id) override {
    std::lock_guard<std::mutex> g(mu);
    auto it = bodies.find(id);
    if (it == bodies.end()) return Error{"no body"};
    return std::shared_ptr<const filters::MessageBody>(std::make_shared<StringBody>(it->second));
  }
  Result<bool> update(const QueueEntry& e, const std::string& owner, bool release) override {
    std::function<void(const QueueEntry&)> cb;
    {
      std::lock_guard<std::mutex> g(mu);
      updates.push_back({e, release});
      auto it = entries.find(e.id);
      if (it == entries.end() || it->second.lease_owner != owner || lose_lease) return false;
      it->second.rcpts = e.rcpts;
      it->second.attempts = e.attempts;
      it->second.next_ms = e.next_ms;
      if (release) {
        it->second.lease_owner.clear();
        it->second.lease_until_ms = 0;
      }
      cb = on_update;
    }
    if (cb) cb(e);
    return true;
  }
  Result<bool> renew(const std::string& id, const std::string& owner, int64_t now_ms, int64_t until_ms) override {
    std::lock_guard<std::mutex> g(mu);
    auto it = entries.find(id);
    if (it == entries.end() || it->second.lease_owner != owner || it->second.lease_until_ms < now_ms || lose_lease)
      return false;
    it->second.lease_until_ms = until_ms;
    return true;
  }
  Result<bool> remove(const std::string& id, const std::string& owner) override {
    std::lock_guard<std::mutex> g(mu);
    auto it = entries.find(id);
    if (it == entries.end() || (!owner.empty() && it->second.lease_owner != owner)) return false;
    entries.erase(it);
    bodies.erase(id);
    return true;
  }
  Result<std::vector<QueueEntry>> list(size_t limit) override {
    std::lock_guard<std::mutex> g(mu);
    std::vector<QueueEntry> out;
    for (auto& [id, e] : entries)
      if (out.size() < limit) out.push_back(e);
    return out;
  }
  Result<std::optional<QueueEntry>> get(const std::string& id) override {
    std::lock_guard<std::mutex> g(mu);
    auto it = entries.find(id);
    if (it == entries.end()) return std::optional<QueueEntry>();
    return std::optional<QueueEntry>(it->second);
  }
  Result<bool> retryNow(const std::string& id) override {
    std::lock_guard<std::mutex> g(mu);
    auto it = entries.find(id);
    if (it == entries.end()) return false;
    it->second.next_ms = 0;
    return true;
  }
  Result<queue::QueueSummary> summary() override {
    std::lock_guard<std::mutex> g(mu);
    queue::QueueSummary s;
    for (auto& [id, e] : entries) {
      ++s.entries;
      s.bytes += e.size;
      if (!s.oldest_created_ms || e.created_ms < s.oldest_created_ms) s.oldest_created_ms = e.created_ms;
    }
    return s;
  }
  Result<std::vector<QueueEntry>> findByMessage(const std::string&, const std::string&) override {
    return std::vector<QueueEntry>();
  }

  QueueEntry at(const std::string& id) {
    std::lock_guard<std::mutex> g(mu);
    return entries.at(id);
  }
  bool has(const std::string& id) {
    std::lock_guard<std::mutex> g(mu);
    return entries.count(id) > 0;
  }
};

// An LMTP node on loopback: per-recipient final replies (250 unless told), or it
// closes the connection after the data without a reply.
class FakeLmtp {
 public:
  struct Delivery {
    std::string from;
    std::vector<std::string> rcpts;
    std::string data;
  };
  FakeLmtp() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 16);
    thread_ = std::thread([this] { run(); });
  }
  ~FakeLmtp() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  void reply(const std::string& rcpt, const std::string& r) {
    std::lock_guard<std::mutex> g(mu_);
    replies_[rcpt] = r;
  }
  void dropAfterData(bool v) { drop_after_data_ = v; }
  std::vector<Delivery> deliveries() {
    std::lock_guard<std::mutex> g(mu_);
    return deliveries_;
  }
  int connections() const { return connections_.load(); }

 private:
  void run() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      ++connections_;
      serve(c);
      ::close(c);
    }
  }
  bool line(int c, std::string* buf, std::string* out) {
    for (;;) {
      const size_t eol = buf->find("\r\n");
      if (eol != std::string::npos) {
        *out = buf->substr(0, eol);
        buf->erase(0, eol + 2);
        return true;
      }
      char tmp[4096];
      const ssize_t n = ::recv(c, tmp, sizeof tmp, 0);
      if (n <= 0) return false;
      buf->append(tmp, static_cast<size_t>(n));
    }
  }
  void say(int c, const std::string& s) { (void)::send(c, s.data(), s.size(), MSG_NOSIGNAL); }
  void serve(int c) {
    std::string buf, l;
    say(c, "220 fake LMTP\r\n");
    Delivery d;
    while (line(c, &buf, &l)) {
      if (l.rfind("LHLO", 0) == 0) {
        say(c, "250-fake\r\n250 8BITMIME\r\n");
      } else if (l.rfind("MAIL FROM:", 0) == 0) {
        d.from = l.substr(10);
        say(c, "250 2.1.0 ok\r\n");
      } else if (l.rfind("RCPT TO:", 0) == 0) {
        d.rcpts.push_back(l.substr(8));
        say(c, "250 2.1.5 ok\r\n");
      } else if (l == "DATA") {
        say(c, "354 go\r\n");
        while (line(c, &buf, &l) && l != ".") d.data += l + "\r\n";
        if (drop_after_data_) return;
        std::lock_guard<std::mutex> g(mu_);
        Delivery taken = d;
        taken.rcpts.clear();
        for (const auto& r : d.rcpts) {
          auto it = replies_.find(r);
          const std::string rep = it == replies_.end() ? "250 2.0.0 delivered" : it->second;
          say(c, rep + "\r\n");
          if (rep[0] == '2') taken.rcpts.push_back(r);
        }
        if (!taken.rcpts.empty()) deliveries_.push_back(taken);
        d = Delivery{};
      } else if (l == "QUIT") {
        say(c, "221 bye\r\n");
        return;
      } else {
        say(c, "500 what\r\n");
      }
    }
  }
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> drop_after_data_{false};
  std::atomic<int> connections_{0};
  std::mutex mu_;
  std::map<std::string, std::string> replies_;
  std::vector<Delivery> deliveries_;
  std::thread thread_;
};

uint16_t closedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

const char kMessage[] =
    "From: Carol <carol@example.com>\r\nTo: dave@example.org, frank@example.org\r\n"
    "Subject: queued\r\nMessage-ID: <q1@example.com>\r\n\r\nHello.\r\n.leading dot\r\n";

class QueueRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log::setLevel(log::Level::kError);
    dir_ = std::filesystem::temp_directory_path() /
           ("queue-runner-test-" + std::to_string(::getpid()) + "-" + std::to_string(nowMs()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    runner_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Nodes n1 and n2 (example.org: n1, then n2; example.net: n2) on the given ports.
  void build(uint16_t n1, uint16_t n2) {
    {
      std::ofstream u(dir_ / "users");
      for (const char* user :
           {"dave@example.org", "frank@example.org", "erin@example.net", "carol@example.com"})
        u << user << ":{PLAIN}secret\n";
    }
    const std::string yaml =
        "listeners:\n"
        "  - { name: mx, protocol: smtp, listen: [\"127.0.0.1:2525\"], tls: none }\n"
        "directory:\n  driver: file\n  file: { users: \"" +
        (dir_ / "users").string() +
        "\" }\n"
        "backends:\n"
        "  - { name: n1, host: 127.0.0.1, ports: { lmtp: " +
        std::to_string(n1) +
        " }, tls: none }\n"
        "  - { name: n2, host: 127.0.0.1, ports: { lmtp: " +
        std::to_string(n2) +
        " }, tls: none }\n"
        "routing:\n  static:\n"
        "    - { domain: example.org, primary: n1, secondary: n2 }\n"
        "    - { domain: example.net, primary: n2 }\n"
        "    - { domain: example.com, primary: n2 }\n";
    auto r = conf::loadConfigText(yaml, (dir_ / "gw.yaml").string());
    for (const auto& e : r.errors) ADD_FAILURE() << e.format();
    ASSERT_TRUE(r.config);
    auto rt = Runtime::build(r.config);
    ASSERT_TRUE(rt) << rt.error();
    rt_ = rt.value();
    cfg_.retry = std::chrono::milliseconds(60000);
    cfg_.max_retry = std::chrono::milliseconds(3600000);
    cfg_.lifetime = std::chrono::milliseconds(86400000);
    cfg_.lease = std::chrono::milliseconds(600000);
    makeRunner();
  }
  void makeRunner() {
    std::shared_ptr<const Runtime> rt = rt_;
    runner_ = std::make_shared<QueueRunner>(
        store_, cfg_, [rt] { return rt; }, "gw-test");
  }
  QueueEntry entry(const std::string& id, std::vector<std::string> rcpts,
                   std::string from = "<carol@example.com>") {
    QueueEntry e;
    e.id = id;
    e.created_ms = nowMs() - 1000;
    e.mail_from = std::move(from);
    e.listener = "mx";
    for (auto& r : rcpts)
      e.rcpts.push_back(QueueRcpt{std::move(r), RcptState::kPending, "451 4.2.0 busy", 0});
    return e;
  }
  void add(QueueEntry e) {
    std::string error;
    ASSERT_EQ(store_->put(std::move(e), StringBody(kMessage), &error), QueueStore::Put::kStored) << error;
  }
  static const QueueRcpt& rcpt(const QueueEntry& e, const std::string& addr) {
    for (const auto& r : e.rcpts)
      if (r.addr == addr) return r;
    throw std::runtime_error("no recipient " + addr);
  }

  std::filesystem::path dir_;
  std::shared_ptr<FakeStore> store_ = std::make_shared<FakeStore>();
  std::shared_ptr<Runtime> rt_;
  conf::QueueConfig cfg_;
  std::shared_ptr<QueueRunner> runner_;
};

TEST_F(QueueRunnerTest, DeliversTheAcceptedDefersTheRestThenDeliversItOnce) {
  FakeLmtp n1;
  build(n1.port(), closedPort());
  n1.reply("<frank@example.org>", "452 4.2.2 mailbox full");
  add(entry("s1-1", {"<dave@example.org>", "<frank@example.org>"}));
  const uint64_t delivered0 = queue::queueStats().delivered.load();

  const int64_t before = nowMs();
  EXPECT_EQ(runner_->runOnce(), 1u);
  QueueEntry e = store_->at("s1-1");
  EXPECT_EQ(rcpt(e, "<dave@example.org>").state, RcptState::kDelivered);
  EXPECT_EQ(rcpt(e, "<frank@example.org>").state, RcptState::kPending);
  EXPECT_EQ(rcpt(e, "<frank@example.org>").reply, "452 4.2.2 mailbox full");
  EXPECT_EQ(e.attempts, 1u);
  EXPECT_GE(e.next_ms, before + 60000);
  EXPECT_LE(e.next_ms, nowMs() + 60000);
  EXPECT_TRUE(e.lease_owner.empty());  // released
  ASSERT_EQ(n1.deliveries().size(), 1u);
  EXPECT_EQ(n1.deliveries()[0].rcpts, std::vector<std::string>{"<dave@example.org>"});
  EXPECT_EQ(n1.deliveries()[0].from, "<carol@example.com>");
  EXPECT_NE(n1.deliveries()[0].data.find("\r\n..leading dot\r\n"), std::string::npos);  // dot-stuffed
  EXPECT_EQ(queue::queueStats().delivered.load(), delivered0 + 1);
  // The accepted recipient was written before the lease was let go.
  ASSERT_GE(store_->updates.size(), 2u);
  EXPECT_FALSE(store_->updates.front().release);
  EXPECT_EQ(rcpt(store_->updates.front().entry, "<dave@example.org>").state, RcptState::kDelivered);

  // Not due yet: nothing happens.
  EXPECT_EQ(runner_->runOnce(), 0u);
  // Retry now, the mailbox has room again: frank gets one copy, dave no second.
  n1.reply("<frank@example.org>", "250 2.0.0 ok");
  ASSERT_TRUE(store_->retryNow("s1-1").value());
  EXPECT_EQ(runner_->runOnce(), 1u);
  EXPECT_FALSE(store_->has("s1-1"));
  ASSERT_EQ(n1.deliveries().size(), 2u);
  EXPECT_EQ(n1.deliveries()[1].rcpts, std::vector<std::string>{"<frank@example.org>"});
}

TEST_F(QueueRunnerTest, FailsOverToTheSecondaryBeforeTheData) {
  FakeLmtp n2;
  build(closedPort(), n2.port());
  add(entry("s2-1", {"<dave@example.org>"}));
  const uint64_t attempts0 = queue::queueStats().attempts.load();
  EXPECT_EQ(runner_->runOnce(), 1u);
  EXPECT_FALSE(store_->has("s2-1"));
  ASSERT_EQ(n2.deliveries().size(), 1u);
  EXPECT_EQ(queue::queueStats().attempts.load(), attempts0 + 2);  // n1 (refused), then n2
}

TEST_F(QueueRunnerTest, NeverTriesAnotherNodeAfterTheEndOfData) {
  FakeLmtp n1, n2;
  build(n1.port(), n2.port());
  n1.dropAfterData(true);
  add(entry("s3-1", {"<dave@example.org>"}));
  EXPECT_EQ(runner_->runOnce(), 1u);
  const QueueEntry e = store_->at("s3-1");
  EXPECT_EQ(rcpt(e, "<dave@example.org>").state, RcptState::kPending);
  EXPECT_NE(rcpt(e, "<dave@example.org>").reply.find("n1"), std::string::npos);
  EXPECT_EQ(n2.connections(), 0);
  EXPECT_EQ(e.attempts, 1u);
}

TEST_F(QueueRunnerTest, AllNodesDownKeepsThemPendingWithTheError) {
  build(closedPort(), closedPort());
  add(entry("s4-1", {"<dave@example.org>", "<frank@example.org>"}));
  EXPECT_EQ(runner_->runOnce(), 1u);
  const QueueEntry e = store_->at("s4-1");
  EXPECT_EQ(e.count(RcptState::kPending), 2u);
  EXPECT_NE(rcpt(e, "<frank@example.org>").reply.find("connect"), std::string::npos);
}

TEST_F(QueueRunnerTest, RecordsEachGroupBeforeTheNextNodeIsContacted) {
  FakeLmtp n1, n2;
  build(n1.port(), n2.port());
  int n2_at_first_update = -1;
  store_->on_update = [&](const QueueEntry&) {
    if (n2_at_first_update < 0) n2_at_first_update = n2.connections();
  };
  add(entry("s5-1", {"<dave@example.org>", "<erin@example.net>"}));
  EXPECT_EQ(runner_->runOnce(), 1u);
  EXPECT_FALSE(store_->has("s5-1"));
  // The groups go in the order of their node's name: n1's recipient is recorded
  // before n2 is connected to.
  EXPECT_EQ(n2_at_first_update, 0);
  EXPECT_EQ(n1.deliveries().size(), 1u);
  EXPECT_EQ(n2.deliveries().size(), 1u);
}

TEST_F(QueueRunnerTest, LostLeaseStopsTheWork) {
  FakeLmtp n1, n2;
  build(n1.port(), n2.port());
  store_->lose_lease = true;
  add(entry("s6-1", {"<dave@example.org>", "<erin@example.net>"}));
  EXPECT_EQ(runner_->runOnce(), 1u);
  EXPECT_EQ(n2.connections(), 0);  // another gateway has the entry: no more deliveries
  EXPECT_TRUE(store_->has("s6-1"));
}

TEST_F(QueueRunnerTest, PermanentFailureQueuesOneDsnThenReports) {
  FakeLmtp n1, n2;
  build(n1.port(), n2.port());
  n1.reply("<frank@example.org>", "550 5.1.1 no such user");
  add(entry("s7-1", {"<dave@example.org>", "<frank@example.org>"}));
  const uint64_t dsn0 = queue::queueStats().dsn_sent.load();

  // The DSN cannot be stored: frank stays failed, the entry stays.
  store_->put_result = QueueStore::Put::kError;
  EXPECT_EQ(runner_->runOnce(), 1u);
  QueueEntry e = store_->at("s7-1");
  EXPECT_EQ(rcpt(e, "<dave@example.org>").state, RcptState::kDelivered);
  EXPECT_EQ(rcpt(e, "<frank@example.org>").state, RcptState::kFailed);
  EXPECT_EQ(rcpt(e, "<frank@example.org>").reply, "550 5.1.1 no such user");
  EXPECT_EQ(queue::queueStats().dsn_sent.load(), dsn0);

  // Next pass: the DSN is stored, frank reported, the entry finished.
  store_->put_result = QueueStore::Put::kStored;
  ASSERT_TRUE(store_->retryNow("s7-1").value());
  EXPECT_EQ(runner_->runOnce(), 2u);  // the original, then the DSN (due now, to carol via n2)
  EXPECT_FALSE(store_->has("s7-1"));
  EXPECT_EQ(queue::queueStats().dsn_sent.load(), dsn0 + 1);
  EXPECT_EQ(n1.deliveries().size(), 1u);  // dave once, frank never
  ASSERT_EQ(n2.deliveries().size(), 1u);
  const FakeLmtp::Delivery dsn = n2.deliveries()[0];
  EXPECT_EQ(dsn.from, "<>");
  EXPECT_EQ(dsn.rcpts, std::vector<std::string>{"<carol@example.com>"});
  EXPECT_NE(dsn.data.find("multipart/report"), std::string::npos);
  EXPECT_NE(dsn.data.find("frank@example.org"), std::string::npos);
  EXPECT_NE(dsn.data.find("Subject: queued"), std::string::npos);  // the original header
  EXPECT_EQ(dsn.data.find("Hello."), std::string::npos);           // not its body
}

TEST_F(QueueRunnerTest, NullSenderGetsNoDsn) {
  FakeLmtp n1;
  build(n1.port(), closedPort());
  n1.reply("<frank@example.org>", "550 5.1.1 no such user");
  add(entry("s8-1", {"<frank@example.org>"}, "<>"));
  const uint64_t dsn0 = queue::queueStats().dsn_sent.load();
  EXPECT_EQ(runner_->runOnce(), 1u);
  EXPECT_FALSE(store_->has("s8-1"));
  EXPECT_EQ(queue::queueStats().dsn_sent.load(), dsn0);
  std::lock_guard<std::mutex> g(store_->mu);
  EXPECT_TRUE(store_->entries.empty());
}

TEST_F(QueueRunnerTest, ExpiresPendingRecipientsAfterTheLifetime) {
  FakeLmtp n1, n2;
  build(n1.port(), n2.port());
  n1.reply("<frank@example.org>", "451 4.2.0 still busy");
  QueueEntry e = entry("s9-1", {"<frank@example.org>"});
  e.created_ms = nowMs() - cfg_.lifetime.count() - 1000;
  add(e);
  const uint64_t expired0 = queue::queueStats().expired.load();
  EXPECT_EQ(runner_->runOnce(), 2u);  // the entry, then its DSN
  EXPECT_FALSE(store_->has("s9-1"));
  EXPECT_EQ(queue::queueStats().expired.load(), expired0 + 1);
  ASSERT_EQ(n2.deliveries().size(), 1u);
  EXPECT_NE(n2.deliveries()[0].data.find("4.4.7"), std::string::npos);
}

TEST_F(QueueRunnerTest, BacksOffDoublingUpToTheMaximum) {
  build(closedPort(), closedPort());
  QueueEntry e = entry("s10-1", {"<dave@example.org>"});
  e.attempts = 2;
  add(e);
  const int64_t before = nowMs();
  runner_->runOnce();
  EXPECT_EQ(store_->at("s10-1").attempts, 3u);
  EXPECT_GE(store_->at("s10-1").next_ms, before + 4 * 60000);
  EXPECT_LE(store_->at("s10-1").next_ms, nowMs() + 4 * 60000);
  e = entry("s10-2", {"<dave@example.org>"});
  e.attempts = 40;
  add(e);
  runner_->runOnce();
  EXPECT_LE(store_->at("s10-2").next_ms, nowMs() + 3600000);
  EXPECT_GE(store_->at("s10-2").next_ms, before + 3600000);
}

TEST_F(QueueRunnerTest, StoreErrorsEndThePassAndTheSummaryIsRead) {
  build(closedPort(), closedPort());
  add(entry("s11-1", {"<dave@example.org>"}));
  store_->fail_claim = true;
  EXPECT_EQ(runner_->runOnce(), 0u);
  EXPECT_EQ(queue::queueStats().entries.load(), 1u);
  EXPECT_GT(queue::queueStats().bytes.load(), 0u);
  EXPECT_EQ(queue::queueStats().oldest_created_ms.load(), store_->at("s11-1").created_ms);
}

TEST_F(QueueRunnerTest, TheThreadWorksWhenWoken) {
  FakeLmtp n1;
  cfg_.scan_interval = std::chrono::milliseconds(60000);
  build(n1.port(), closedPort());
  runner_->start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the first pass found nothing
  add(entry("s12-1", {"<dave@example.org>"}));
  runner_->wake();
  for (int i = 0; i < 200 && store_->has("s12-1"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(store_->has("s12-1"));
  EXPECT_TRUE(runner_->stop());
}

}  // namespace
}  // namespace mailgate::session
