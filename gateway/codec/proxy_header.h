#pragma once
// Parser for the PROXY protocol header (HAProxy, versions 1 and 2) that a load
// balancer sends first on a connection, to pass on the client's addresses. PURE: no
// I/O, no clock, no logging, no allocation.
//
// feed() accepts any split and stops at the end of the header (kDone); the bytes
// after it belong to the session (a TLS ClientHello, or the client's first command)
// and are not consumed. The version is told by the first byte: 'P' (v1, text) or
// CR (v2, binary); anything else is kError at once, so a client that speaks to the
// listener directly is turned away on its first byte.
//
// Behaviour choices:
// - v1: "PROXY TCP4|TCP6 src dst sport dport" CRLF, at most 107 octets, fields
//   separated by one SP, addresses of the stated family (inet_pton), ports decimal
//   0-65535 without leading zeros; "PROXY UNKNOWN" followed by anything printable up to CRLF carries no
//   addresses. A bare LF, a control character or a line over 107 octets is kError.
// - v2: the 12-octet signature, version 2, command LOCAL or PROXY, then the length
//   of the rest. PROXY over STREAM with INET or INET6 carries addresses (the block
//   must be long enough for the family); LOCAL (the balancer's own health check),
//   and the UNSPEC and UNIX families, carry none: the connection's own addresses
//   stand. DGRAM, an unknown command, family or version is kError. TLVs after the
//   address block are skipped unread (the length field bounds them: 65535 octets).
// - After kError, feed() returns {kError, 0}; after kDone, {kDone, 0}.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mailgate::codec {

enum class ProxyStatus : uint8_t { kNeedMore, kDone, kError };

struct ProxyFeed {
  ProxyStatus status;
  size_t consumed;
};

struct ProxyHeader {
  uint8_t version = 0;         // 1 or 2
  bool has_addresses = false;  // false: the connection's own addresses stand
  bool ipv6 = false;     // src_ip is IPv6 (an IPv4-mapped address is given as IPv4)
  char src_ip[46] = {};  // textual (inet_ntop), NUL-terminated; IPv6 without brackets
  char dst_ip[46] = {};
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
};

class ProxyHeaderParser {
 public:
  static constexpr size_t kV1Max = 107;  // the longest v1 line, CRLF included

  ProxyFeed feed(std::string_view in) noexcept;
  const ProxyHeader& header() const noexcept { return header_; }
  std::string_view errorText() const noexcept { return error_; }

 private:
  enum class State : uint8_t { kStart, kV1, kV2, kDone, kError };
  static constexpr size_t kV2Fixed = 16;
  static constexpr size_t kV2MaxAddr = 216;  // AF_UNIX: two 108-octet paths

  ProxyFeed fail(const char* why, size_t consumed) noexcept;
  ProxyFeed feedV1(std::string_view in) noexcept;
  ProxyFeed feedV2(std::string_view in) noexcept;
  bool parseV1Line() noexcept;  // buf_[0, have_) without CRLF
  bool finishV2() noexcept;

  State state_ = State::kStart;
  ProxyHeader header_;
  const char* error_ = "";
  char buf_[kV2Fixed + kV2MaxAddr] = {};
  size_t have_ = 0;     // octets kept in buf_
  uint32_t total_ = 0;  // v2: 16 + length, once the fixed part is in
  uint32_t seen_ = 0;   // v2: octets consumed so far
  uint8_t v2_command_ = 0;  // 0 LOCAL, 1 PROXY
  uint8_t v2_family_ = 0;   // 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX
};

}  // namespace mailgate::codec
