// mailgate-load flood: see flood.h.
#include "bench/flood.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>

namespace mailgate::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Pending {
  Clock::time_point started;
  std::string got;  // bytes read so far (up to the first line)
};

struct Counts {
  unsigned long refused_line = 0;  // "* BYE", "421"/"554", "-ERR": a refusal line, then EOF
  unsigned long closed = 0;        // EOF or reset with no line at all (nginx's deny)
  unsigned long accepted = 0;      // some other first line: the target did not refuse
  unsigned long failed = 0;        // connect error or timeout
};

bool isRefusal(const std::string& line) {
  return line.rfind("* BYE", 0) == 0 || line.rfind("421", 0) == 0 || line.rfind("554", 0) == 0 ||
         line.rfind("-ERR", 0) == 0;
}

}  // namespace

int runFlood(const FloodParams& p) {
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(p.port);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  if (inet_pton(AF_INET, p.host.c_str(), &dst.sin_addr) != 1 ||
      inet_pton(AF_INET, p.source.c_str(), &src.sin_addr) != 1) {
    std::fprintf(stderr, "flood: --host and --source must be IPv4 addresses\n");
    return 2;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::unordered_map<int, Pending> open;
  Counts c;
  unsigned long started = 0;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(p.duration));
  const auto per_conn = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(p.timeout));

  auto finish = [&](int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    open.erase(fd);
  };
  auto launch = [&]() -> bool {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
        (connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0 && errno != EINPROGRESS)) {
      close(fd);
      ++started;
      ++c.failed;
      return true;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    open[fd] = Pending{Clock::now(), {}};
    ++started;
    return true;
  };

  epoll_event evs[256];
  while (true) {
    const auto now = Clock::now();
    const bool more = started < p.count && now < deadline;
    while (more && open.size() < p.concurrency && started < p.count) {
      if (!launch()) break;
    }
    if (open.empty() && !(started < p.count && Clock::now() < deadline)) break;
    int n = epoll_wait(ep, evs, 256, 100);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      auto it = open.find(fd);
      if (it == open.end()) continue;
      char buf[1024];
      bool done = false;
      while (!done) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r > 0) {
          it->second.got.append(buf, static_cast<size_t>(r));
          size_t nl = it->second.got.find('\n');
          if (nl != std::string::npos) {
            if (isRefusal(it->second.got)) ++c.refused_line;
            else ++c.accepted;
            done = true;
          }
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
          // EOF or reset: a refusal without a line (a partial line counts as one).
          if (!it->second.got.empty() && isRefusal(it->second.got)) ++c.refused_line;
          else if (errno == ECONNREFUSED && r < 0) ++c.failed;
          else ++c.closed;
          done = true;
        } else if (errno == EAGAIN) {
          break;
        }
      }
      if (done) finish(fd);
    }
    // Timeouts.
    const auto t = Clock::now();
    for (auto it = open.begin(); it != open.end();) {
      if (t - it->second.started > per_conn) {
        int fd = it->first;
        ++it;
        ++c.failed;
        finish(fd);
      } else {
        ++it;
      }
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  close(ep);
  const unsigned long total = c.refused_line + c.closed + c.accepted + c.failed;
  std::printf("{\"mode\":\"flood\",\"label\":\"%s\",\"source\":\"%s\",\"connections\":%lu,\"refused_line\":%lu,"
              "\"closed\":%lu,\"accepted\":%lu,\"failed\":%lu,\"elapsed_s\":%.3f,\"per_s\":%.1f}\n",
              p.label.c_str(), p.source.c_str(), total, c.refused_line, c.closed, c.accepted, c.failed, elapsed,
              elapsed > 0 ? static_cast<double>(total) / elapsed : 0.0);
  std::fflush(stdout);
  return c.failed == 0 && c.accepted == 0 ? 0 : 1;
}

}  // namespace mailgate::bench
