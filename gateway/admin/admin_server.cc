#include "gateway/admin/admin_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "gateway/core/log.h"
#include "gateway/io/listener.h"

namespace mailgate::admin {

namespace {
constexpr size_t kMaxRequest = 4096;
constexpr int kIoTimeoutMs = 2000;

void sendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, kIoTimeoutMs) <= 0) return;
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

std::string response(int code, const char* reason, const std::string& body, const char* type) {
  return "HTTP/1.0 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}
}  // namespace

AdminServer::AdminServer(std::string listen, std::function<std::string()> metrics)
    : listen_(std::move(listen)), metrics_(std::move(metrics)) {}

AdminServer::~AdminServer() { stop(); }

Result<bool> AdminServer::start() {
  auto addr = io::parseListenAddress(listen_);
  if (!addr) return Error{"admin.listen: " + addr.error()};
  auto fd = io::openListener(addr.value(), 64);
  if (!fd) return Error{"admin.listen: " + fd.error()};
  fd_ = fd.value();
  thread_ = std::thread([this] { run(); });
  return true;
}

void AdminServer::stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void AdminServer::run() {
  while (!stop_.load()) {
    pollfd p{fd_, POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r <= 0) continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) continue;
    serve(c);
    ::close(c);
  }
}

void AdminServer::serve(int fd) {
  std::string req;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kIoTimeoutMs);
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos) {
    if (req.size() > kMaxRequest || std::chrono::steady_clock::now() > deadline) return;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    char buf[1024];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    req.append(buf, static_cast<size_t>(n));
  }
  if (req.rfind("GET /metrics", 0) == 0 && (req[12] == ' ' || req[12] == '?')) {
    sendAll(fd, response(200, "OK", metrics_(), "text/plain; version=0.0.4"));
  } else if (req.rfind("GET /healthz ", 0) == 0) {
    sendAll(fd, response(200, "OK", "ok\n", "text/plain"));
  } else if (req.rfind("GET ", 0) == 0) {
    sendAll(fd, response(404, "Not Found", "not found\n", "text/plain"));
  } else {
    sendAll(fd, response(405, "Method Not Allowed", "GET only\n", "text/plain"));
  }
}

}  // namespace mailgate::admin
