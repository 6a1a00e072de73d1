#include "filters/policy/net_prefix.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace mailgate::filters::policy {

namespace {
uint8_t width(uint8_t family) { return family == 4 ? 32 : 128; }

bool parseRaw(std::string_view text, NetAddr* out) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  NetAddr a;
  if (inet_pton(AF_INET, buf, a.bytes) == 1) {
    a.family = 4;
    a.prefix = 32;
    *out = a;
    return true;
  }
  if (inet_pton(AF_INET6, buf, a.bytes) == 1) {
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(a.bytes, kMapped, 12) == 0) {
      std::memmove(a.bytes, a.bytes + 12, 4);
      std::memset(a.bytes + 4, 0, 12);
      a.family = 4;
      a.prefix = 32;
    } else {
      a.family = 6;
      a.prefix = 128;
    }
    *out = a;
    return true;
  }
  return false;
}
}  // namespace

NetAddr NetAddr::masked(uint8_t bits) const {
  NetAddr r = *this;
  if (!valid()) return r;
  if (bits > width(family)) bits = width(family);
  if (bits > prefix) bits = prefix;
  r.prefix = bits;
  const unsigned n = width(family) / 8;
  for (unsigned i = 0; i < n; i++) {
    const unsigned lo = i * 8;
    if (lo >= bits)
      r.bytes[i] = 0;
    else if (lo + 8 > bits)
      r.bytes[i] &= static_cast<uint8_t>(0xff00u >> (bits - lo));
  }
  return r;
}

bool NetAddr::contains(const NetAddr& addr) const {
  if (!valid() || addr.family != family || addr.prefix < prefix) return false;
  return addr.masked(prefix) == *this;
}

bool NetAddr::operator==(const NetAddr& o) const {
  return family == o.family && prefix == o.prefix && std::memcmp(bytes, o.bytes, 16) == 0;
}

std::string NetAddr::text() const {
  if (!valid()) return {};
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(family == 4 ? AF_INET : AF_INET6, bytes, buf, sizeof buf);
  std::string s(buf);
  if (prefix != width(family)) {
    s += '/';
    s += std::to_string(prefix);
  }
  return s;
}

bool parseAddr(std::string_view text, NetAddr* out) { return parseRaw(text, out); }

bool parseCidr(std::string_view text, NetAddr* out, std::string* error) {
  const size_t slash = text.find('/');
  NetAddr a;
  if (!parseRaw(text.substr(0, slash), &a)) {
    if (error) *error = "not an IP address or network: \"" + std::string(text) + "\"";
    return false;
  }
  unsigned bits = width(a.family);
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    unsigned v = 0;
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    // An IPv4-mapped network written in IPv6 form counts its prefix in IPv6 bits.
    const bool mapped = a.family == 4 && text.find(':') != std::string_view::npos;
    if (mapped && v >= 96) v -= 96;
    if (p.empty() || ec != std::errc() || ptr != p.data() + p.size() || v > width(a.family)) {
      if (error) *error = "bad prefix length in \"" + std::string(text) + "\"";
      return false;
    }
    bits = v;
  }
  *out = a.masked(static_cast<uint8_t>(bits));
  return true;
}

uint64_t hashNet(const NetAddr& a, uint64_t seed) {
  // FNV-1a over family, prefix and the address bytes, then a final mix.
  uint64_t h = 1469598103934665603ull ^ seed;
  auto mix = [&h](uint8_t b) {
    h ^= b;
    h *= 1099511628211ull;
  };
  mix(a.family);
  mix(a.prefix);
  for (uint8_t b : a.bytes) mix(b);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

}  // namespace mailgate::filters::policy
