#include "gateway/codec/proxy_header.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "gateway/core/ascii.h"

namespace mailgate::codec {
namespace {

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr unsigned char kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                            0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kInetBlock = 12;   // 4 + 4 + 2 + 2
constexpr size_t kInet6Block = 36;  // 16 + 16 + 2 + 2

// Decimal 0-65535, 1-5 digits, no leading zero.
bool parsePort(std::string_view s, uint16_t* out) noexcept {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (!ascii::isDigit(c)) return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}

// A binary address of `family` in canonical text into out[46]; an IPv4-mapped IPv6
// address (::ffff:a.b.c.d, from a dual-stack balancer) as the IPv4 address it is, as
// the gateway prints a mapped peer. *v6 tells which family came out.
bool printAddress(int family, const void* bin, char* out, bool* v6 = nullptr) noexcept {
  const auto* b = static_cast<const unsigned char*>(bin);
  static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (family == AF_INET6 && std::memcmp(b, kMapped, sizeof kMapped) == 0) {
    family = AF_INET;
    b += sizeof kMapped;
  }
  if (v6) *v6 = family == AF_INET6;
  return inet_ntop(family, b, out, INET6_ADDRSTRLEN) != nullptr;
}

// A textual address of `family`, rewritten by printAddress into out[46].
bool parseAddress(int family, std::string_view s, char* out, bool* v6 = nullptr) noexcept {
  char text[INET6_ADDRSTRLEN] = {};
  if (s.empty() || s.size() >= sizeof text) return false;
  std::memcpy(text, s.data(), s.size());
  unsigned char bin[sizeof(in6_addr)];
  if (inet_pton(family, text, bin) != 1) return false;
  return printAddress(family, bin, out, v6);
}

uint16_t be16(const char* p) noexcept {
  return static_cast<uint16_t>((static_cast<unsigned char>(p[0]) << 8) | static_cast<unsigned char>(p[1]));
}

}  // namespace

ProxyFeed ProxyHeaderParser::fail(const char* why, size_t consumed) noexcept {
  state_ = State::kError;
  error_ = why;
  return {ProxyStatus::kError, consumed};
}

ProxyFeed ProxyHeaderParser::feed(std::string_view in) noexcept {
  switch (state_) {
    case State::kDone:
      return {ProxyStatus::kDone, 0};
    case State::kError:
      return {ProxyStatus::kError, 0};
    case State::kStart:
      if (in.empty()) return {ProxyStatus::kNeedMore, 0};
      if (in[0] == 'P') {
        state_ = State::kV1;
      } else if (in[0] == '\r') {
        state_ = State::kV2;
      } else {
        return fail("not a PROXY protocol header", 1);
      }
      break;
    case State::kV1:
    case State::kV2:
      break;
  }
  return state_ == State::kV1 ? feedV1(in) : feedV2(in);
}

ProxyFeed ProxyHeaderParser::feedV1(std::string_view in) noexcept {
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    const bool after_cr = have_ > 0 && buf_[have_ - 1] == '\r';
    if (c == '\n') {
      if (!after_cr) return fail("bare LF in a v1 header", i + 1);
      --have_;  // the CR
      if (!parseV1Line()) return fail(error_, i + 1);
      state_ = State::kDone;
      return {ProxyStatus::kDone, i + 1};
    }
    if (after_cr) return fail("CR not followed by LF in a v1 header", i + 1);
    const auto u = static_cast<unsigned char>(c);
    if (c != '\r' && (u < 0x20 || u > 0x7e)) return fail("control or 8-bit octet in a v1 header", i + 1);
    if (have_ + 1 >= kV1Max) return fail("v1 header longer than 107 octets", i + 1);
    if (have_ < kV1Prefix.size() && c != kV1Prefix[have_]) return fail("not a PROXY protocol header", i + 1);
    buf_[have_++] = c;
  }
  return {ProxyStatus::kNeedMore, in.size()};
}

bool ProxyHeaderParser::parseV1Line() noexcept {
  header_.version = 1;
  std::string_view rest(buf_ + kV1Prefix.size(), have_ - kV1Prefix.size());
  if (rest == "UNKNOWN" || rest.starts_with("UNKNOWN ")) return true;  // no addresses
  // Exactly five fields, one SP between each, none empty, nothing after the last.
  std::string_view field[5];
  size_t n = 0;
  bool ok = std::count(rest.begin(), rest.end(), ' ') == 4;
  while (ok && n < 5) {
    const size_t sp = rest.find(' ');
    field[n] = rest.substr(0, sp);
    ok = !field[n++].empty();
    rest.remove_prefix(sp == std::string_view::npos ? rest.size() : sp + 1);
  }
  if (!ok) {
    error_ = "a v1 header needs: protocol, source, destination, source port, destination port";
    return false;
  }
  int family = 0;
  if (field[0] == "TCP4") {
    family = AF_INET;
  } else if (field[0] == "TCP6") {
    family = AF_INET6;
  } else {
    error_ = "unknown v1 protocol (TCP4, TCP6 or UNKNOWN)";
    return false;
  }
  if (!parseAddress(family, field[1], header_.src_ip, &header_.ipv6) ||
      !parseAddress(family, field[2], header_.dst_ip)) {
    error_ = "v1 address not of the stated family";
    return false;
  }
  if (!parsePort(field[3], &header_.src_port) || !parsePort(field[4], &header_.dst_port)) {
    error_ = "v1 port not a decimal number 0-65535";
    return false;
  }
  header_.has_addresses = true;
  return true;
}

ProxyFeed ProxyHeaderParser::feedV2(std::string_view in) noexcept {
  size_t i = 0;
  while (i < in.size() && seen_ < kV2Fixed) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (seen_ < sizeof kV2Signature && c != kV2Signature[seen_]) return fail("not a PROXY protocol header", i + 1);
    if (seen_ == 12) {
      if ((c >> 4) != 2) return fail("unsupported v2 version", i + 1);
      if ((c & 0x0f) > 1) return fail("unknown v2 command", i + 1);
      v2_command_ = c & 0x0f;
    } else if (seen_ == 13) {
      if ((c >> 4) > 3) return fail("unknown v2 address family", i + 1);
      if ((c & 0x0f) > 2) return fail("unknown v2 transport", i + 1);
      // With PROXY: UNSPEC (0x00) or a family over STREAM (0x11, 0x21, 0x31).
      if (v2_command_ == 1 && (c & 0x0f) == 2) return fail("v2 header for a datagram connection", i + 1);
      if (v2_command_ == 1 && c != 0x00 && ((c & 0x0f) != 1 || (c >> 4) == 0))
        return fail("v2 family and transport must both be given", i + 1);
      v2_family_ = static_cast<uint8_t>(c >> 4);
    }
    buf_[have_++] = static_cast<char>(c);
    ++seen_;
    ++i;
    if (seen_ == kV2Fixed) total_ = static_cast<uint32_t>(kV2Fixed + be16(buf_ + 14));
  }
  if (seen_ < kV2Fixed) return {ProxyStatus::kNeedMore, i};
  // The address block is kept (up to its largest size); TLVs are skipped unread.
  const size_t n = std::min(in.size() - i, static_cast<size_t>(total_ - seen_));
  const size_t keep = std::min(n, sizeof buf_ - have_);
  std::memcpy(buf_ + have_, in.data() + i, keep);
  have_ += keep;
  seen_ += static_cast<uint32_t>(n);
  i += n;
  if (seen_ < total_) return {ProxyStatus::kNeedMore, i};
  if (!finishV2()) return fail(error_, i);
  state_ = State::kDone;
  return {ProxyStatus::kDone, i};
}

bool ProxyHeaderParser::finishV2() noexcept {
  header_.version = 2;
  if (v2_command_ == 0 || (v2_family_ != 1 && v2_family_ != 2)) return true;  // LOCAL, UNSPEC, UNIX
  const bool v6 = v2_family_ == 2;
  const size_t block = v6 ? kInet6Block : kInetBlock;
  if (total_ - kV2Fixed < block) {
    error_ = "v2 address block shorter than its family needs";
    return false;
  }
  const char* a = buf_ + kV2Fixed;
  const size_t alen = v6 ? 16 : 4;
  const int family = v6 ? AF_INET6 : AF_INET;
  if (!printAddress(family, a, header_.src_ip, &header_.ipv6) ||
      !printAddress(family, a + alen, header_.dst_ip)) {
    error_ = "v2 address not printable";
    return false;
  }
  header_.src_port = be16(a + 2 * alen);
  header_.dst_port = be16(a + 2 * alen + 2);
  header_.has_addresses = true;
  return true;
}

}  // namespace mailgate::codec
