#include "gateway/core/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace mailgate::sd {

std::string Notifier::parseAddress(std::string_view value, void* out, unsigned* len_out) {
  auto* sa = static_cast<sockaddr_un*>(out);
  std::memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (value.empty()) return "empty";
  if (value[0] != '/' && value[0] != '@') return "neither a path nor an abstract name (@...)";
  if (value.size() > sizeof sa->sun_path - (value[0] == '/' ? 1 : 0)) return "too long for a unix socket address";
  if (value.find('\0') != std::string_view::npos) return "contains NUL";
  std::memcpy(sa->sun_path, value.data(), value.size());
  if (value[0] == '@') sa->sun_path[0] = '\0';  // abstract: no terminating NUL is counted
  *len_out = static_cast<unsigned>(offsetof(sockaddr_un, sun_path) + value.size() + (value[0] == '/' ? 1 : 0));
  return "";
}

Notifier Notifier::fromEnvironment() {
  Notifier n;
  const char* sock = std::getenv("NOTIFY_SOCKET");
  const char* usec = std::getenv("WATCHDOG_USEC");
  const char* wpid = std::getenv("WATCHDOG_PID");
  if (usec) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(usec, &end, 10);
    bool ours = true;
    if (wpid && *wpid) {
      char* pend = nullptr;
      const long p = std::strtol(wpid, &pend, 10);
      ours = pend && *pend == '\0' && p == static_cast<long>(::getpid());
    }
    if (errno == 0 && end && *end == '\0' && v > 0 && ours) n.watchdog_ = std::chrono::microseconds(v);
  }
  if (sock && *sock) {
    sockaddr_un sa;
    unsigned len = 0;
    const std::string why = parseAddress(sock, &sa, &len);
    if (!why.empty()) {
      n.problem_ = std::string("NOTIFY_SOCKET=") + sock + ": " + why;
    } else {
      const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        n.problem_ = std::string("NOTIFY_SOCKET: socket: ") + std::strerror(errno);
      } else if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), len) != 0) {
        n.problem_ = std::string("NOTIFY_SOCKET=") + sock + ": " + std::strerror(errno);
        ::close(fd);
      } else {
        n.fd_ = fd;
      }
    }
  }
  if (!n.enabled()) n.watchdog_ = std::chrono::microseconds(0);  // nobody to ping
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("WATCHDOG_PID");
  return n;
}

Notifier::Notifier(Notifier&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), problem_(std::move(o.problem_)), watchdog_(o.watchdog_) {}

Notifier& Notifier::operator=(Notifier&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    problem_ = std::move(o.problem_);
    watchdog_ = o.watchdog_;
  }
  return *this;
}

Notifier::~Notifier() {
  if (fd_ >= 0) ::close(fd_);
}

bool Notifier::send(std::string_view state) {
  if (fd_ < 0) return false;
  for (;;) {
    const ssize_t n = ::send(fd_, state.data(), state.size(), MSG_NOSIGNAL);
    if (n >= 0) return static_cast<size_t>(n) == state.size();
    if (errno != EINTR) return false;
  }
}

std::string statusLine(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
  if (out.size() > 512) out.resize(512);
  return out;
}

bool allAlive(const std::vector<uint64_t>& heartbeats_ms, uint64_t now_ms, uint64_t stall_ms) {
  for (uint64_t h : heartbeats_ms)
    if (h + stall_ms < now_ms) return false;
  return true;
}

}  // namespace mailgate::sd
