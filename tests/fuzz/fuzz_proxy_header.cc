// libFuzzer target for the PROXY protocol header parser (v1 and v2).
// Input: [split seed byte] data... Fed whole and in seed-derived chunks; both runs
// must end the same way at the same offset with the same addresses (split
// independence). Invariants: consumed <= input, kNeedMore consumes everything, a
// v1 header ends within 107 octets, addresses read back, IPv4-mapped ones as IPv4.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "gateway/codec/proxy_header.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::ProxyFeed;
using mailgate::codec::ProxyHeader;
using mailgate::codec::ProxyHeaderParser;
using mailgate::codec::ProxyStatus;
using mailgate::fuzz::Chunker;

std::string run(std::string_view in, uint32_t seed) {
  ProxyHeaderParser p;
  Chunker ch{seed};
  size_t pos = 0;
  while (pos < in.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    const ProxyFeed f = p.feed(chunk);
    FUZZ_CHECK(f.consumed <= chunk.size());
    pos += f.consumed;
    if (f.status == ProxyStatus::kNeedMore) {
      FUZZ_CHECK(f.consumed == chunk.size());
      continue;
    }
    FUZZ_CHECK(p.feed(in.substr(pos)).consumed == 0);  // nothing more is taken
    if (f.status == ProxyStatus::kError) {
      FUZZ_CHECK(!p.errorText().empty());
      return "E@" + std::to_string(pos) + std::string(p.errorText());
    }
    const ProxyHeader& h = p.header();
    FUZZ_CHECK(h.version == 1 || h.version == 2);
    if (h.version == 1) FUZZ_CHECK(pos <= ProxyHeaderParser::kV1Max);
    std::string out = "D@" + std::to_string(pos) + " v" + std::to_string(h.version);
    if (h.has_addresses) {
      unsigned char bin[sizeof(in6_addr)];
      FUZZ_CHECK(inet_pton(h.ipv6 ? AF_INET6 : AF_INET, h.src_ip, bin) == 1);
      FUZZ_CHECK(inet_pton(AF_INET, h.dst_ip, bin) == 1 || inet_pton(AF_INET6, h.dst_ip, bin) == 1);
      // An IPv4-mapped address is given as IPv4.
      FUZZ_CHECK(std::strncmp(h.src_ip, "::ffff:", 7) != 0 || std::strchr(h.src_ip, '.') == nullptr);
      out += std::string(" ") + h.src_ip + ":" + std::to_string(h.src_port) + ">" + h.dst_ip + ":" +
             std::to_string(h.dst_port);
    }
    return out;
  }
  return "?";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t seed = data[0];
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  FUZZ_CHECK(run(in, 0) == run(in, 1u + seed));
  return 0;
}
