#include "conf/icap_url.h"

#include <arpa/inet.h>

#include <algorithm>

#include "gateway/core/ascii.h"

namespace mailgate::conf {

namespace {

bool parsePort(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 5) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (!ascii::isDigit(c)) return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

bool isHostChar(char c) { return ascii::isHexDigit(c) || c == '.' || c == ':'; }

}  // namespace


bool parseIcapUrl(std::string_view text, IcapUrl* out, std::string* why) {
  constexpr std::string_view kScheme = "icap://";
  if (!ascii::istartsWith(text, kScheme)) {
    *why = "expected icap://HOST[:PORT]/SERVICE";
    return false;
  }
  std::string_view rest = text.substr(kScheme.size());
  IcapUrl u;
  std::string_view host;
  if (!rest.empty() && rest.front() == '[') {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      *why = "unterminated [IPv6] host";
      return false;
    }
    host = rest.substr(1, close - 1);
    rest.remove_prefix(close + 1);
    in6_addr a6{};
    if (!std::all_of(host.begin(), host.end(), isHostChar) ||
        inet_pton(AF_INET6, std::string(host).c_str(), &a6) != 1) {
      *why = "the host must be a numeric IPv4 or [IPv6] address";
      return false;
    }
  } else {
    const size_t end = rest.find_first_of(":/");
    host = rest.substr(0, end);
    rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
    in_addr a4{};
    if (host.empty() || !std::all_of(host.begin(), host.end(), isHostChar) ||
        inet_pton(AF_INET, std::string(host).c_str(), &a4) != 1) {
      *why = "the host must be a numeric IPv4 or [IPv6] address (no names: nothing may block)";
      return false;
    }
  }
  u.host = std::string(host);
  if (!rest.empty() && rest.front() == ':') {
    rest.remove_prefix(1);
    const size_t slash = rest.find('/');
    uint64_t port = 0;
    if (!parsePort(rest.substr(0, slash), &port) || port == 0 || port > 65535) {
      *why = "the port must be a number from 1 to 65535";
      return false;
    }
    u.port = static_cast<uint16_t>(port);
    rest.remove_prefix(slash == std::string_view::npos ? rest.size() : slash);
  }
  if (rest.size() < 2 || rest.front() != '/') {
    *why = "missing /SERVICE after the host";
    return false;
  }
  rest.remove_prefix(1);
  for (char c : rest) {
    if (!(ascii::isAlpha(c) || ascii::isDigit(c) || c == '-' || c == '_' || c == '.' || c == '/' || c == '?' ||
          c == '=' || c == '&' || c == '%' || c == '~')) {
      *why = "the service name may hold only A-Z a-z 0-9 - _ . / ? = & % ~";
      return false;
    }
  }
  if (rest.size() > 200) {
    *why = "the service name is too long";
    return false;
  }
  u.service = std::string(rest);
  *out = std::move(u);
  return true;
}

std::string IcapUrl::uri() const {
  const bool v6 = host.find(':') != std::string::npos;
  return "icap://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + "/" + service;
}

std::string IcapUrl::address() const {
  const bool v6 = host.find(':') != std::string::npos;
  return "tcp:" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

}  // namespace mailgate::conf
