#pragma once
// Listening sockets: one per address per reactor, SO_REUSEPORT so the kernel
// spreads connections across reactors.
#include <sys/socket.h>

#include <string>

#include "gateway/core/result.h"

namespace mailgate::io {

struct SockAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

// "host:port", "[v6]:port", "*:port" → address (numeric hosts only).
Result<SockAddr> parseListenAddress(const std::string& text);
// Resolves host (numeric or name, blocking getaddrinfo) and port.
Result<SockAddr> resolveAddress(const std::string& host, uint16_t port);
// Creates a nonblocking, close-on-exec, SO_REUSEPORT listening socket.
Result<int> openListener(const SockAddr& addr, int backlog);
// "1.2.3.4" / "::1" and the port of an address.
std::string addressHost(const sockaddr_storage& ss);
uint16_t addressPort(const sockaddr_storage& ss);

}  // namespace mailgate::io
