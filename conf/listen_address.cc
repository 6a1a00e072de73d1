// Listen addresses: "IPv4:port", "[IPv6]:port", "*:port". Numeric only: a host name
// would make the bound address depend on DNS at start-up. Syntax only; whether the
// address can be bound is found out when the listener opens its sockets.
#include <arpa/inet.h>

#include <string>
#include <string_view>
#include <utility>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

bool fail(std::string* error, std::string message) {
  if (error) *error = std::move(message);
  return false;
}

bool parsePort(std::string_view s, uint16_t* port) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v < 1 || v > 65535) return false;
  *port = static_cast<uint16_t>(v);
  return true;
}

}  // namespace

bool parseListenAddress(const std::string& text, ListenAddress* out, std::string* error) {
  std::string_view s = text;
  std::string host;
  std::string_view port_text;
  if (!s.empty() && s.front() == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos) return fail(error, "missing ']' after the IPv6 address");
    host = std::string(s.substr(1, close - 1));
    in6_addr a6{};
    if (host.empty() || inet_pton(AF_INET6, host.c_str(), &a6) != 1)
      return fail(error, "\"" + host + "\" is not an IPv6 address");
    if (close + 1 >= s.size() || s[close + 1] != ':')
      return fail(error, "missing \":PORT\" after \"[" + host + "]\"");
    port_text = s.substr(close + 2);
  } else {
    const size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) return fail(error, "missing \":PORT\" (use HOST:PORT or *:PORT)");
    host = std::string(s.substr(0, colon));
    port_text = s.substr(colon + 1);
    if (host.find(':') != std::string::npos)
      return fail(error, "an IPv6 address must be written in brackets, as [ADDR]:PORT");
    if (host.empty()) return fail(error, "missing host (use *:PORT for every address)");
    if (host == "*") {
      host.clear();
    } else {
      in_addr a4{};
      if (inet_pton(AF_INET, host.c_str(), &a4) != 1)
        return fail(error, "\"" + host + "\" is not an IPv4 address (host names are not accepted here)");
    }
  }
  uint16_t port = 0;
  if (!parsePort(port_text, &port))
    return fail(error, "port \"" + std::string(port_text) + "\" is not a number from 1 to 65535");
  out->host = std::move(host);
  out->port = port;
  return true;
}

}  // namespace mailgate::conf
