#include "bench/auth_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <strings.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <unordered_map>

namespace mailgate::bench {
namespace {

volatile sig_atomic_t g_stop = 0;
void onSignal(int) { g_stop = 1; }

constexpr size_t kMaxRequest = 16 * 1024;

// Value of header `name` (case-insensitive) in the request head, or empty.
std::string_view header(std::string_view head, std::string_view name) {
  size_t pos = 0;
  while (pos < head.size()) {
    size_t eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) eol = head.size();
    std::string_view line = head.substr(pos, eol - pos);
    if (line.size() > name.size() && line[name.size()] == ':' &&
        strncasecmp(line.data(), name.data(), name.size()) == 0) {
      std::string_view v = line.substr(name.size() + 1);
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      return v;
    }
    pos = eol + 2;
  }
  return {};
}

// nginx %-escapes the user and password; decode.
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      char hex[3] = {s[i + 1], s[i + 2], 0};
      char* end = nullptr;
      long v = std::strtol(hex, &end, 16);
      if (end == hex + 2) {
        out += static_cast<char>(v);
        i += 2;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

}  // namespace

int runAuthHttp(const AuthHttpParams& params) {
  signal(SIGTERM, onSignal);
  signal(SIGINT, onSignal);
  signal(SIGPIPE, SIG_IGN);
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(params.listen_port);
  if (inet_pton(AF_INET, params.listen_host.c_str(), &sa.sin_addr) != 1 ||
      ::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, 1024) != 0) {
    std::fprintf(stderr, "authhttp: cannot listen on %s:%u: %s\n", params.listen_host.c_str(),
                 params.listen_port, std::strerror(errno));
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = lfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  std::unordered_map<int, std::string> requests;
  const std::string ok_reply = "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: " + params.backend_host +
                               "\r\nAuth-Port: " + std::to_string(params.backend_port) + "\r\n\r\n";
  const std::string bad_reply =
      "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 1\r\n\r\n";
  uint64_t served = 0;
  epoll_event events[256];
  while (g_stop == 0) {
    int n = epoll_wait(ep, events, 256, 500);
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          int c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          epoll_event cev{};
          cev.events = EPOLLIN;
          cev.data.fd = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
          requests[c].clear();
        }
        continue;
      }
      std::string& req = requests[fd];
      char buf[4096];
      bool done = false;
      for (;;) {
        ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r > 0) {
          req.append(buf, static_cast<size_t>(r));
          if (req.size() > kMaxRequest) done = true;
          continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) done = true;
        break;
      }
      size_t head_end = req.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        std::string_view head = std::string_view(req).substr(0, head_end);
        std::string pass = unescape(header(head, "Auth-Pass"));
        std::string_view method = header(head, "Auth-Method");
        bool none = method.size() == 4 && strncasecmp(method.data(), "none", 4) == 0;
        bool ok = pass == params.password || (params.accept_none && none);
        const std::string& reply = ok ? ok_reply : bad_reply;
        ssize_t w = ::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
        (void)w;  // a few hundred bytes into an empty socket buffer
        ++served;
        done = true;
      }
      if (done) {
        requests.erase(fd);
        ::close(fd);
      }
    }
  }
  std::fprintf(stderr, "authhttp: served %llu requests\n", static_cast<unsigned long long>(served));
  return 0;
}

}  // namespace mailgate::bench
