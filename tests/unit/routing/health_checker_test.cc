#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "routing/router.h"

namespace mailgate::routing {
namespace {

using namespace std::chrono_literals;

// A loopback listener that answers each connection with a fixed greeting (or nothing).
class FakeNode {
 public:
  // split > 0: the greeting is sent as its first `split` bytes, a pause, then the rest.
  explicit FakeNode(std::string greeting, bool answer = true, std::size_t split = 0)
      : greeting_(std::move(greeting)), answer_(answer), split_(split) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeNode() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  void serve() {
    while (!stop_) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      accepted_.fetch_add(1);
      if (answer_) {
        std::size_t first = split_ == 0 ? greeting_.size() : split_;
        (void)::send(c, greeting_.data(), first, MSG_NOSIGNAL);
        if (first < greeting_.size()) {
          std::this_thread::sleep_for(50ms);
          (void)::send(c, greeting_.data() + first, greeting_.size() - first, MSG_NOSIGNAL);
        }
        char buf[64];
        (void)::recv(c, buf, sizeof buf, 0);  // the probe's LOGOUT/QUIT, or its close
        ::close(c);
      } else {
        held_.push_back(c);  // silent node: keep the connection open, say nothing
      }
    }
    for (int c : held_) ::close(c);
  }

  std::string greeting_;
  bool answer_;
  std::size_t split_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::vector<int> held_;
  std::thread thread_;
};

// A port nobody listens on: bind, read the port, close.
uint16_t closedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

conf::BackendConfig backendAt(uint16_t port, std::chrono::milliseconds timeout = 1000ms) {
  conf::BackendConfig b;
  b.name = "node";
  b.host = "127.0.0.1";
  b.ports.imap = port;
  b.health.timeout = timeout;
  b.health.interval = 50ms;
  return b;
}

TEST(HealthProbe, ImapGreetingIsUp) {
  FakeNode node("* OK hi\r\n");
  std::string why;
  EXPECT_TRUE(HealthChecker::probe(backendAt(node.port()), &why)) << why;
}

TEST(HealthProbe, Pop3AndSmtpGreetingsAreUp) {
  FakeNode pop("+OK Dovecot ready.\r\n");
  FakeNode smtp("220-mx.example.org ESMTP\r\n220 ready\r\n");
  auto b = backendAt(0);
  b.ports.imap = 0;
  b.ports.pop3 = pop.port();
  b.ports.smtp = smtp.port();  // pop3 comes first
  std::string why;
  EXPECT_TRUE(HealthChecker::probe(b, &why)) << why;
  EXPECT_EQ(pop.accepted(), 1);
  EXPECT_EQ(smtp.accepted(), 0);
  b.ports.pop3 = 0;
  EXPECT_TRUE(HealthChecker::probe(b, &why)) << why;
  EXPECT_EQ(smtp.accepted(), 1);
}

TEST(HealthProbe, GreetingSplitAcrossWrites) {
  FakeNode node("* OK [CAPABILITY IMAP4rev1] split\r\n", true, 3);
  std::string why;
  EXPECT_TRUE(HealthChecker::probe(backendAt(node.port()), &why)) << why;
}

TEST(HealthProbe, ByeGreetingIsDown) {
  FakeNode node("* BYE Too many connections\r\n");
  std::string why;
  EXPECT_FALSE(HealthChecker::probe(backendAt(node.port()), &why));
  EXPECT_EQ(why, "unexpected greeting: * BYE Too many connections");
}

TEST(HealthProbe, SmtpTemporaryRefusalIsDown) {
  FakeNode node("421 4.3.2 shutting down\r\n");
  auto b = backendAt(0);
  b.ports.imap = 0;
  b.ports.lmtp = node.port();
  std::string why;
  EXPECT_FALSE(HealthChecker::probe(b, &why));
  EXPECT_NE(why.find("unexpected greeting"), std::string::npos) << why;
}

TEST(HealthProbe, ClosedPortIsDown) {
  std::string why;
  EXPECT_FALSE(HealthChecker::probe(backendAt(closedPort()), &why));
  EXPECT_EQ(why, "connect: Connection refused");
}

TEST(HealthProbe, SilentNodeTimesOut) {
  FakeNode node("", false);
  std::string why;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(HealthChecker::probe(backendAt(node.port(), 200ms), &why));
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(why, "timed out waiting for greeting");
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 1500ms);
}

TEST(HealthProbe, ImplicitTlsIsConnectOnly) {
  FakeNode node("", false);
  auto b = backendAt(node.port(), 200ms);
  b.tls = conf::TlsMode::kImplicit;
  std::string why;
  EXPECT_TRUE(HealthChecker::probe(b, &why)) << why;
  b.ports.imap = closedPort();
  EXPECT_FALSE(HealthChecker::probe(b, &why));
}

TEST(HealthProbe, NoPortAndBadHost) {
  auto b = backendAt(0);
  std::string why;
  EXPECT_FALSE(HealthChecker::probe(b, &why));
  EXPECT_EQ(why, "no port configured");
  EXPECT_EQ(HealthChecker::probePort(b), 0);
  b = backendAt(143);
  b.host = "not a host name!";
  EXPECT_FALSE(HealthChecker::probe(b, &why));
  EXPECT_EQ(why.rfind("resolve not a host name!: ", 0), 0u) << why;
}

bool waitUntil(const std::atomic<bool>& flag, bool want, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (flag.load() == want) return true;
    std::this_thread::sleep_for(10ms);
  }
  return flag.load() == want;
}

TEST(HealthChecker, MarksBackendsDownAndUpAgain) {
  auto node = std::make_unique<FakeNode>("* OK ready\r\n");
  const uint16_t dead = closedPort();
  auto c = std::make_shared<conf::Config>();
  c->backends = {backendAt(node->port()), backendAt(dead)};
  c->backends[0].name = "alive";
  c->backends[1].name = "dead";
  Router router(c);
  Backend* alive = router.find("alive");
  Backend* gone = router.find("dead");
  HealthChecker hc(router);
  hc.start();
  EXPECT_TRUE(waitUntil(gone->up, false, 2s));
  EXPECT_GE(gone->checks_failed.load(), 1u);
  std::this_thread::sleep_for(200ms);  // several intervals: stays up, probed repeatedly
  EXPECT_TRUE(alive->up.load());
  EXPECT_GE(node->accepted(), 2);
  EXPECT_EQ(alive->checks_failed.load(), 0u);

  node.reset();  // the alive node stops
  EXPECT_TRUE(waitUntil(alive->up, false, 2s));
  hc.stop();
}

TEST(HealthChecker, RecoversWhenNodeComesBack) {
  FakeNode node("* OK back\r\n");
  auto c = std::make_shared<conf::Config>();
  c->backends = {backendAt(node.port())};
  Router router(c);
  Backend* b = router.find("node");
  b->up.store(false);  // as if a previous check had failed
  HealthChecker hc(router);
  hc.start();
  EXPECT_TRUE(waitUntil(b->up, true, 2s));
}

TEST(HealthChecker, StopsPromptlyWithLongIntervalAndSlowProbe) {
  FakeNode silent("", false);
  auto c = std::make_shared<conf::Config>();
  c->backends = {backendAt(silent.port(), 10s), backendAt(closedPort())};
  c->backends[0].health.interval = std::chrono::hours(1);
  c->backends[1].name = "other";
  c->backends[1].health.interval = std::chrono::hours(1);
  Router router(c);
  HealthChecker hc(router);
  hc.start();
  std::this_thread::sleep_for(100ms);  // the silent probe is in progress (10 s timeout)
  auto t0 = std::chrono::steady_clock::now();
  hc.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);
  // An interrupted probe does not mark the node down.
  EXPECT_TRUE(router.find("node")->up.load());

  HealthChecker idle(router);
  idle.start();
  std::this_thread::sleep_for(50ms);
  t0 = std::chrono::steady_clock::now();
  idle.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);
}

TEST(HealthChecker, StopWithoutStartAndDoubleStop) {
  auto c = std::make_shared<conf::Config>();
  Router router(c);
  HealthChecker hc(router);
  hc.stop();
  hc.start();
  hc.stop();
  hc.stop();
}

}  // namespace
}  // namespace mailgate::routing
