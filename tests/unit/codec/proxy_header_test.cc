#include "gateway/codec/proxy_header.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using namespace std::string_literals;

const std::string kSig = "\r\n\r\n\0\r\nQUIT\n"s;

// What the parser made of `in` fed in pieces of `step` octets (0 = whole):
// "D v1 203.0.113.7:40000>127.0.0.1:143 +N" (N = octets left unconsumed), "D v2 -"
// (no addresses), "E reason" or "?" (needs more).
std::string parse(const std::string& in, size_t step = 0) {
  ProxyHeaderParser p;
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t n = step == 0 ? in.size() - pos : std::min(step, in.size() - pos);
    const ProxyFeed f = p.feed(std::string_view(in).substr(pos, n));
    EXPECT_LE(f.consumed, n);
    pos += f.consumed;
    if (f.status == ProxyStatus::kError) return "E " + std::string(p.errorText());
    if (f.status == ProxyStatus::kDone) {
      const ProxyHeader& h = p.header();
      std::string out = "D v" + std::to_string(h.version) + " ";
      if (!h.has_addresses) {
        out += "-";
      } else {
        out += std::string(h.src_ip) + ":" + std::to_string(h.src_port) + ">" + h.dst_ip + ":" +
               std::to_string(h.dst_port);
      }
      return out + " +" + std::to_string(in.size() - pos);
    }
    EXPECT_EQ(f.consumed, n);  // kNeedMore takes everything
  }
  return "?";
}

std::string v2(uint8_t ver_cmd, uint8_t fam, const std::string& body) {
  std::string h = kSig;
  h += static_cast<char>(ver_cmd);
  h += static_cast<char>(fam);
  h += static_cast<char>(body.size() >> 8);
  h += static_cast<char>(body.size() & 0xff);
  return h + body;
}

std::string inet4Block() {  // 203.0.113.7:40000 -> 127.0.0.1:143
  return "\xcb\x00\x71\x07"s + "\x7f\x00\x00\x01"s + "\x9c\x40"s + "\x00\x8f"s;
}

std::string inet6Block() {  // [2001:db8::7]:40000 -> [::1]:993
  std::string src(16, '\0'), dst(16, '\0');
  src[0] = '\x20';
  src[1] = '\x01';
  src[2] = '\x0d';
  src[3] = '\xb8';
  src[15] = '\x07';
  dst[15] = '\x01';
  return src + dst + "\x9c\x40"s + "\x03\xe1"s;
}

TEST(ProxyHeader, V1Tcp4AndTheRestIsLeft) {
  EXPECT_EQ(parse("PROXY TCP4 203.0.113.7 127.0.0.1 40000 143\r\na1 LOGIN x y\r\n"),
            "D v1 203.0.113.7:40000>127.0.0.1:143 +14");
}

TEST(ProxyHeader, V1Tcp6Canonical) {
  EXPECT_EQ(parse("PROXY TCP6 2001:0db8:0:0::7 ::1 40000 993\r\n"), "D v1 2001:db8::7:40000>::1:993 +0");
}

TEST(ProxyHeader, Ipv4MappedAddressesAreGivenAsIpv4) {
  EXPECT_EQ(parse("PROXY TCP6 ::ffff:203.0.113.7 ::ffff:10.0.0.5 40000 143\r\n"),
            "D v1 203.0.113.7:40000>10.0.0.5:143 +0");
  std::string mapped(16, '\0');
  mapped[10] = mapped[11] = '\xff';
  mapped[12] = '\xcb';
  mapped[13] = '\x00';
  mapped[14] = '\x71';
  mapped[15] = '\x07';
  std::string dst(16, '\0');
  dst[15] = '\x01';
  EXPECT_EQ(parse(v2(0x21, 0x21, mapped + dst + "\x9c\x40"s + "\x00\x8f"s)), "D v2 203.0.113.7:40000>::1:143 +0");
  ProxyHeaderParser p;
  ASSERT_EQ(p.feed("PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n").status, ProxyStatus::kDone);
  EXPECT_FALSE(p.header().ipv6);
}

TEST(ProxyHeader, V1Unknown) {
  EXPECT_EQ(parse("PROXY UNKNOWN\r\n"), "D v1 - +0");
  EXPECT_EQ(parse("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), "D v1 - +0");
}

TEST(ProxyHeader, V1Errors) {
  EXPECT_EQ(parse("a1 LOGIN alice secret\r\n"), "E not a PROXY protocol header");
  EXPECT_EQ(parse("PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "E not a PROXY protocol header");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "E bare LF in a v1 header");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n"), "E CR not followed by LF in a v1 header");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"), "E control or 8-bit octet in a v1 header");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n").substr(0, 25), "E a v1 header needs: prot");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n").substr(0, 25), "E a v1 header needs: prot");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n").substr(0, 25), "E a v1 header needs: prot");
  EXPECT_EQ(parse("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), "E unknown v1 protocol (TCP4, TCP6 or UNKNOWN)");
  EXPECT_EQ(parse("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), "E v1 address not of the stated family");
  EXPECT_EQ(parse("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), "E v1 address not of the stated family");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), "E v1 port not a decimal number 0-65535");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), "E v1 port not a decimal number 0-65535");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"), "E v1 port not a decimal number 0-65535");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 0 2\r\n"), "D v1 1.2.3.4:0>5.6.7.8:2 +0");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n").substr(0, 25), "E a v1 header needs: prot");
  EXPECT_EQ(parse("PROXY TCP4 \r\n").substr(0, 25), "E a v1 header needs: prot");
}

TEST(ProxyHeader, V1LengthBound) {
  // 107 octets with CRLF is the longest line.
  std::string longest = "PROXY UNKNOWN " + std::string(107 - 16, 'x') + "\r\n";
  ASSERT_EQ(longest.size(), 107u);
  EXPECT_EQ(parse(longest), "D v1 - +0");
  std::string over = "PROXY UNKNOWN " + std::string(107 - 15, 'x') + "\r\n";
  EXPECT_EQ(parse(over), "E v1 header longer than 107 octets");
  // A header that never ends is refused at the bound, not buffered.
  EXPECT_EQ(parse("PROXY UNKNOWN " + std::string(1000, 'x')), "E v1 header longer than 107 octets");
}

TEST(ProxyHeader, V2Inet) {
  EXPECT_EQ(parse(v2(0x21, 0x11, inet4Block()) + "EHLO x\r\n"), "D v2 203.0.113.7:40000>127.0.0.1:143 +8");
}

TEST(ProxyHeader, V2Inet6WithTlvsSkipped) {
  std::string tlvs = ("\x04\x00\x03"s + "abc") + "\x20\x00\x05\x01\x00\x00\x00\x00"s;  // NOOP, SSL
  EXPECT_EQ(parse(v2(0x21, 0x21, inet6Block() + tlvs)), "D v2 2001:db8::7:40000>::1:993 +0");
  // TLVs of any length (the field allows 65535) pass without being kept.
  EXPECT_EQ(parse(v2(0x21, 0x21, inet6Block() + std::string(60000, 'T')) + "x"),
            "D v2 2001:db8::7:40000>::1:993 +1");
}

TEST(ProxyHeader, V2LocalUnspecAndUnixCarryNoAddresses) {
  EXPECT_EQ(parse(v2(0x20, 0x00, "")), "D v2 - +0");
  EXPECT_EQ(parse(v2(0x20, 0x11, inet4Block())), "D v2 - +0");  // LOCAL: the block is ignored
  EXPECT_EQ(parse(v2(0x21, 0x00, "")), "D v2 - +0");
  EXPECT_EQ(parse(v2(0x21, 0x31, std::string(216, '\0'))), "D v2 - +0");
}

TEST(ProxyHeader, V2Errors) {
  std::string bad_sig = kSig;
  bad_sig[7] = 'q';
  EXPECT_EQ(parse(bad_sig + "\x21\x11\x00\x0c"s + inet4Block()), "E not a PROXY protocol header");
  EXPECT_EQ(parse(v2(0x11, 0x11, inet4Block())), "E unsupported v2 version");
  EXPECT_EQ(parse(v2(0x22, 0x11, inet4Block())), "E unknown v2 command");
  EXPECT_EQ(parse(v2(0x21, 0x41, inet4Block())), "E unknown v2 address family");
  EXPECT_EQ(parse(v2(0x21, 0x13, inet4Block())), "E unknown v2 transport");
  EXPECT_EQ(parse(v2(0x21, 0x12, inet4Block())), "E v2 header for a datagram connection");
  EXPECT_EQ(parse(v2(0x21, 0x10, inet4Block())), "E v2 family and transport must both be given");
  EXPECT_EQ(parse(v2(0x21, 0x01, inet4Block())), "E v2 family and transport must both be given");
  EXPECT_EQ(parse(v2(0x20, 0x12, inet4Block())), "D v2 - +0");  // LOCAL: whatever follows is ignored
  EXPECT_EQ(parse(v2(0x21, 0x11, inet4Block().substr(0, 11))), "E v2 address block shorter than its family needs");
  EXPECT_EQ(parse(v2(0x21, 0x21, inet4Block())), "E v2 address block shorter than its family needs");
}

TEST(ProxyHeader, AnySplitGivesTheSameAnswer) {
  const std::vector<std::string> inputs = {
      "PROXY TCP4 203.0.113.7 127.0.0.1 40000 143\r\nrest",
      "PROXY TCP6 2001:db8::7 ::1 40000 993\r\n",
      "PROXY UNKNOWN\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
      v2(0x21, 0x11, inet4Block()) + "rest",
      v2(0x21, 0x21, inet6Block() + ("\x04\x00\x03"s + "abc")),
      v2(0x20, 0x00, ""),
      v2(0x21, 0x12, inet4Block()),
  };
  for (const std::string& in : inputs) {
    const std::string whole = parse(in);
    for (size_t step = 1; step <= in.size(); ++step) EXPECT_EQ(parse(in, step), whole) << "step " << step;
  }
}

TEST(ProxyHeader, AfterTheEndFeedTakesNothing) {
  ProxyHeaderParser p;
  const std::string in = "PROXY UNKNOWN\r\nmore";
  ProxyFeed f = p.feed(in);
  EXPECT_EQ(f.status, ProxyStatus::kDone);
  EXPECT_EQ(f.consumed, 15u);
  f = p.feed("more");
  EXPECT_EQ(f.status, ProxyStatus::kDone);
  EXPECT_EQ(f.consumed, 0u);
  ProxyHeaderParser e;
  EXPECT_EQ(e.feed("x").status, ProxyStatus::kError);
  f = e.feed("PROXY UNKNOWN\r\n");
  EXPECT_EQ(f.status, ProxyStatus::kError);
  EXPECT_EQ(f.consumed, 0u);
}

}  // namespace
}  // namespace mailgate::codec
