// deliverToNode against scripted LMTP nodes on loopback: the envelope's deadline
// bounds every wait of the conversation.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "conf/config.h"
#include "gateway/session/node_delivery.h"

using mailgate::filters::StringBody;

namespace mailgate::session {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// One connection: the node greets (unless `silent`), answers every command, and
// after the end of data says nothing more (it hangs) until the test ends.
class StuckNode {
 public:
  explicit StuckNode(bool silent) : silent_(silent) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    addr_.len = sizeof a;
    std::memcpy(&addr_.ss, &a, sizeof a);
    ::listen(fd_, 4);
    thread_ = std::thread([this] { run(); });
  }
  ~StuckNode() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  const io::SockAddr& addr() const { return addr_; }

 private:
  void say(int c, const std::string& s) { (void)::send(c, s.data(), s.size(), MSG_NOSIGNAL); }
  void run() {
    int c = -1;
    while (!stop_ && c < 0) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) c = ::accept(fd_, nullptr, nullptr);
    }
    if (c < 0) return;
    if (!silent_) say(c, "220 stuck LMTP\r\n");
    std::string buf;
    bool data = false;
    while (!stop_) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char tmp[4096];
      const ssize_t n = ::recv(c, tmp, sizeof tmp, 0);
      if (n <= 0) break;
      buf.append(tmp, static_cast<size_t>(n));
      for (size_t eol; !silent_ && (eol = buf.find("\r\n")) != std::string::npos;) {
        const std::string l = buf.substr(0, eol);
        buf.erase(0, eol + 2);
        if (data) continue;  // the message, and after its end: nothing
        if (l.rfind("LHLO", 0) == 0) say(c, "250 stuck\r\n");
        else if (l == "DATA") {
          say(c, "354 go\r\n");
          data = true;
        } else {
          say(c, "250 ok\r\n");
        }
      }
    }
    ::close(c);
  }
  bool silent_;
  int fd_ = -1;
  io::SockAddr addr_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct Delivery {
  NodeAttempt attempt;
  milliseconds took{};
};

Delivery deliver(const StuckNode& node, Clock::time_point deadline) {
  static conf::BackendConfig backend;
  backend.name = "stuck";
  DeliveryTarget t;
  t.backend = &backend;
  t.addr = node.addr();
  t.lmtp = true;
  NodeEnvelope env;
  env.mail_from = "<alice@example.org>";
  env.hostname = "gw.example";
  env.deadline = deadline;
  const auto start = Clock::now();
  Delivery d;
  d.attempt = deliverToNode(t, env, {"<dave@example.org>"}, StringBody("Subject: x\r\n\r\nhello\r\n"));
  d.took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  return d;
}

TEST(NodeDeliveryTest, TheDeadlineEndsTheWaitForTheGreeting) {
  StuckNode node(/*silent=*/true);
  const Delivery d = deliver(node, Clock::now() + milliseconds(300));
  EXPECT_EQ(d.attempt.error, kNodeDeadlineError);
  EXPECT_FALSE(d.attempt.sent_data);
  EXPECT_TRUE(d.attempt.accepted.empty());
  EXPECT_GE(d.took, milliseconds(250));
  EXPECT_LT(d.took, milliseconds(5000));  // not the 60 s reply timeout
}

TEST(NodeDeliveryTest, TheDeadlineEndsTheWaitForTheFinalReply) {
  StuckNode node(/*silent=*/false);
  const Delivery d = deliver(node, Clock::now() + milliseconds(500));
  EXPECT_EQ(d.attempt.error, kNodeDeadlineError);
  EXPECT_TRUE(d.attempt.sent_data);  // the node may have taken it: no other node is tried
  EXPECT_TRUE(d.attempt.accepted.empty());
  EXPECT_LT(d.took, milliseconds(5000));  // not the 600 s final-reply timeout
}

TEST(NodeDeliveryTest, APassedDeadlineFailsAtTheFirstWait) {
  StuckNode node(/*silent=*/false);
  const Delivery d = deliver(node, Clock::now() - milliseconds(1));
  EXPECT_EQ(d.attempt.error, kNodeDeadlineError);
  EXPECT_FALSE(d.attempt.sent_data);
}

}  // namespace
}  // namespace mailgate::session
