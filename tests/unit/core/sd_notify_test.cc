// The notify protocol's client side against a real unix datagram socket.
#include "gateway/core/sd_notify.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

namespace mailgate::sd {
namespace {

struct Receiver {
  int fd = -1;
  std::string name;
  explicit Receiver(bool abstract) {
    fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    socklen_t len;
    if (abstract) {
      name = "@mailgate-unit-" + std::to_string(::getpid());
      std::memcpy(sa.sun_path + 1, name.data() + 1, name.size() - 1);
      len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    } else {
      name = "/tmp/mailgate-unit-notify-" + std::to_string(::getpid());
      ::unlink(name.c_str());
      std::memcpy(sa.sun_path, name.data(), name.size());
      len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
    }
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), len), 0) << std::strerror(errno);
  }
  ~Receiver() {
    ::close(fd);
    if (name[0] == '/') ::unlink(name.c_str());
  }
  std::string recv() {
    char buf[1024];
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
};

TEST(SdNotify, PathAndAbstractSockets) {
  for (bool abstract : {false, true}) {
    Receiver r(abstract);
    ::setenv("NOTIFY_SOCKET", r.name.c_str(), 1);
    ::unsetenv("WATCHDOG_USEC");
    Notifier n = Notifier::fromEnvironment();
    ASSERT_TRUE(n.enabled()) << n.problem();
    EXPECT_EQ(std::getenv("NOTIFY_SOCKET"), nullptr);  // children do not inherit it
    EXPECT_TRUE(n.send("READY=1\nSTATUS=up"));
    EXPECT_EQ(r.recv(), "READY=1\nSTATUS=up");
    EXPECT_EQ(n.watchdog().count(), 0);
  }
}

TEST(SdNotify, WithoutSocketNothingIsSent) {
  ::unsetenv("NOTIFY_SOCKET");
  ::setenv("WATCHDOG_USEC", "1000000", 1);
  Notifier n = Notifier::fromEnvironment();
  EXPECT_FALSE(n.enabled());
  EXPECT_TRUE(n.problem().empty());
  EXPECT_FALSE(n.send("READY=1"));
  EXPECT_EQ(n.watchdog().count(), 0);  // nobody to ping
}

TEST(SdNotify, BadAddressIsAProblemNotACrash) {
  ::setenv("NOTIFY_SOCKET", "relative/path", 1);
  Notifier n = Notifier::fromEnvironment();
  EXPECT_FALSE(n.enabled());
  EXPECT_NE(n.problem().find("neither a path nor an abstract name"), std::string::npos);
  ::setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
  Notifier m = Notifier::fromEnvironment();
  EXPECT_FALSE(m.enabled());
  EXPECT_NE(m.problem().find("No such file"), std::string::npos);
  sockaddr_un sa;
  unsigned len;
  EXPECT_FALSE(Notifier::parseAddress("/" + std::string(200, 'x'), &sa, &len).empty());
  EXPECT_TRUE(Notifier::parseAddress("@x", &sa, &len).empty());
  EXPECT_EQ(len, offsetof(sockaddr_un, sun_path) + 2);
  EXPECT_EQ(sa.sun_path[0], '\0');
}

TEST(SdNotify, WatchdogOnlyForThisProcess) {
  Receiver r(true);
  ::setenv("NOTIFY_SOCKET", r.name.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "30000000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  EXPECT_EQ(Notifier::fromEnvironment().watchdog().count(), 30000000);
  ::setenv("NOTIFY_SOCKET", r.name.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "30000000", 1);
  ::setenv("WATCHDOG_PID", "1", 1);
  EXPECT_EQ(Notifier::fromEnvironment().watchdog().count(), 0);
  ::setenv("NOTIFY_SOCKET", r.name.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "soon", 1);
  EXPECT_EQ(Notifier::fromEnvironment().watchdog().count(), 0);
  EXPECT_EQ(std::getenv("WATCHDOG_PID"), nullptr);
}

TEST(SdNotify, StatusLineIsOneLine) {
  EXPECT_EQ(statusLine("reload failed: a\nb\tc"), "reload failed: a b c");
  EXPECT_EQ(statusLine(std::string(1000, 'x')).size(), 512u);
}

TEST(SdNotify, AllAlive) {
  EXPECT_TRUE(allAlive({}, 10000, 1000));
  EXPECT_TRUE(allAlive({9500, 9900}, 10000, 1000));
  EXPECT_TRUE(allAlive({9000}, 10000, 1000));
  EXPECT_FALSE(allAlive({9900, 8999}, 10000, 1000));  // one reactor stuck
}

}  // namespace
}  // namespace mailgate::sd
