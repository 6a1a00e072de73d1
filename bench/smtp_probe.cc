#include "bench/smtp_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace mailgate::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

class Probe {
 public:
  explicit Probe(const SmtpProbeParams& p) : p_(p) {}
  ~Probe() {
    if (fd_ >= 0) ::close(fd_);
  }
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;

  bool connect() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return fail("socket", std::strerror(errno));
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(p_.port);
    if (inet_pton(AF_INET, p_.host.c_str(), &sa.sin_addr) != 1) return fail("address", p_.host);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
      return fail("connect", std::strerror(errno));
    return true;
  }

  // Sends all of data (blocking).
  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t w = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        return fail("send", std::strerror(errno));
      }
      data.remove_prefix(static_cast<size_t>(w));
    }
    return true;
  }

  // Reads one whole reply (all its lines); returns its code, or -1.
  int reply(std::string* text = nullptr) {
    std::string all;
    for (;;) {
      size_t eol = buf_.find("\r\n");
      if (eol == std::string::npos) {
        if (!fill()) return -1;
        continue;
      }
      std::string line = buf_.substr(0, eol);
      buf_.erase(0, eol + 2);
      all += line;
      all += '\n';
      if (line.size() < 4 || line[3] == ' ') {
        if (text) *text = all;
        if (line.size() < 3) return 0;
        return std::atoi(line.substr(0, 3).c_str());
      }
    }
  }

  bool expect(int want, const char* what) {
    std::string text;
    int code = reply(&text);
    if (code == want) return true;
    if (code < 0) return false;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return fail(what, "unexpected reply: " + text);
  }

  const std::string& error() const { return error_; }

 private:
  bool fill() {
    pollfd pfd{fd_, POLLIN, 0};
    int r = ::poll(&pfd, 1, static_cast<int>(p_.timeout * 1000));
    if (r == 0) return fail("read", "timeout");
    if (r < 0) return fail("poll", std::strerror(errno));
    char tmp[4096];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n == 0) return fail("read", "connection closed");
    if (n < 0) {
      if (errno == EINTR) return true;
      return fail("read", std::strerror(errno));
    }
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  bool fail(const char* what, const std::string& why) {
    if (error_.empty()) error_ = std::string(what) + ": " + why;
    return false;
  }

  const SmtpProbeParams& p_;
  int fd_ = -1;
  std::string buf_;
  std::string error_;
};

std::string body(const SmtpProbeParams& p, unsigned n) {
  std::string s = "From: <" + p.from + ">\r\nTo: <" + p.to + ">\r\nSubject: probe " + std::to_string(n) +
                  "\r\nMessage-ID: <probe-" + std::to_string(n) + "@bench.invalid>\r\n\r\n";
  const std::string line =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n";
  size_t payload = 0;
  while (payload + line.size() <= p.size) {
    s += line;
    payload += line.size();
  }
  if (payload < p.size) s += std::string(p.size - payload > 2 ? p.size - payload - 2 : 0, 'x') + "\r\n";
  return s;  // ends with CRLF, no line starts with '.'
}

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  idx = idx == 0 ? 0 : idx - 1;
  return v[std::min(idx, v.size() - 1)];
}

}  // namespace

int runSmtpProbe(const SmtpProbeParams& p) {
  Probe c(p);
  std::vector<double> lat_ms;
  lat_ms.reserve(p.messages);
  unsigned sent = 0;
  bool ok = c.connect() && c.expect(220, "greeting") && c.send("EHLO " + p.helo + "\r\n") &&
            c.expect(250, "EHLO");
  const std::string mail = "MAIL FROM:<" + p.from + ">\r\n";
  const std::string rcpt = "RCPT TO:<" + p.to + ">\r\n";
  for (unsigned i = 0; ok && i < p.warmup + p.messages; ++i) {
    std::string data = body(p, i);
    if (p.dot_with_body) data += ".\r\n";
    ok = c.send(mail) && c.expect(250, "MAIL") && c.send(rcpt) && c.expect(250, "RCPT") &&
         c.send("DATA\r\n") && c.expect(354, "DATA") && (p.dot_with_body || c.send(data));
    if (!ok) break;
    auto t0 = SteadyClock::now();
    ok = c.send(p.dot_with_body ? std::string_view(data) : std::string_view(".\r\n")) &&
         c.expect(250, "end of data");
    auto t1 = SteadyClock::now();
    if (!ok) break;
    ++sent;
    if (i >= p.warmup)
      lat_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  if (ok) {
    c.send("QUIT\r\n");
    c.reply();
  }
  double mean = 0, mx = 0;
  for (double v : lat_ms) {
    mean += v;
    mx = std::max(mx, v);
  }
  if (!lat_ms.empty()) mean /= static_cast<double>(lat_ms.size());
  auto clean = [](const std::string& in) {
    std::string out;
    for (char ch : in)
      if (ch != '"' && ch != '\\' && static_cast<unsigned char>(ch) >= 0x20) out += ch;
    return out;
  };
  const std::string label = clean(p.label), err = ok ? std::string() : clean(c.error());
  std::printf(
      "{\"mode\":\"smtplat\",\"accepted\":%u,\"recorded\":%zu,\"errors\":%d,\"error\":\"%s\","
      "\"latency_ms\":{\"median\":%.3f,\"p99\":%.3f,\"mean\":%.3f,\"max\":%.3f},\"label\":\"%s\"}\n",
      sent, lat_ms.size(), ok ? 0 : 1, err.c_str(), pct(lat_ms, 0.5), pct(lat_ms, 0.99),
      mean, mx, label.c_str());
  std::fflush(stdout);
  if (!ok) std::fprintf(stderr, "smtplat: %s\n", c.error().c_str());
  return ok ? 0 : 1;
}

}  // namespace mailgate::bench
