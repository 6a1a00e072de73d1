#pragma once
// The address of an ICAP service: icap://HOST[:PORT]/SERVICE with a numeric host
// (IPv4, or IPv6 in brackets: nothing may block on a name), port 1344 by default.
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::conf {

struct IcapUrl {
  std::string host;  // without brackets
  uint16_t port = 1344;
  std::string service;
  std::string uri() const;      // "icap://host:port/service" as sent in the request line
  std::string address() const;  // "tcp:host:port" / "tcp:[v6]:port" (filters::ConnectionHost)
};

// false, and why in *why, when text is not such a URL.
bool parseIcapUrl(std::string_view text, IcapUrl* out, std::string* why);

}  // namespace mailgate::conf
