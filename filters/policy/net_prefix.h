#pragma once
// Client addresses as policy keys: an address, or the network it belongs to at a
// configured prefix length (IPv4 /32 and IPv6 /64 by default), in one fixed-size
// value that hashes and compares without allocating. IPv4-mapped IPv6 addresses
// (::ffff:a.b.c.d) are IPv4.
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::filters::policy {

struct NetAddr {
  uint8_t family = 0;  // 0 = none, 4, 6
  uint8_t bytes[16] = {};  // IPv4 in the first 4
  uint8_t prefix = 0;      // significant bits (32/128 for an address)

  bool valid() const { return family != 0; }
  // The network of this address at `bits` (clamped to the family's width).
  NetAddr masked(uint8_t bits) const;
  // Whether `addr` lies inside this network.
  bool contains(const NetAddr& addr) const;
  // "192.0.2.1", "2001:db8::/64" (the prefix only when it is not the full width).
  std::string text() const;
  bool operator==(const NetAddr& o) const;
};

// Parses an address ("192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"); false when it is not one.
bool parseAddr(std::string_view text, NetAddr* out);
// Parses a network ("10.0.0.0/8", "2001:db8::/32", or an address = its full width);
// host bits are cleared. false (and *error says why) when it is not one.
bool parseCidr(std::string_view text, NetAddr* out, std::string* error = nullptr);

// The client.net key: the address at the family's configured prefix.
inline NetAddr clientNet(const NetAddr& a, uint8_t v4_prefix, uint8_t v6_prefix) {
  return a.masked(a.family == 4 ? v4_prefix : v6_prefix);
}

uint64_t hashNet(const NetAddr& a, uint64_t seed = 0);

}  // namespace mailgate::filters::policy
