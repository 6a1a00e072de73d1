// libFuzzer target for the policy's network parsing: parseCidr and IpSet's list-file
// lines. Input: a list file's text. Invariants: parsing never crashes; a parsed
// network has its host bits clear and reads back from its text; when every line
// parses, the built set contains each network and answers membership for probe
// addresses exactly as a linear scan over the networks does; a bad line is named
// with its number.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/policy/ip_set.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::filters::policy::IpSet;
using mailgate::filters::policy::NetAddr;
using mailgate::filters::policy::parseCidr;

constexpr std::string_view kSpace = " \t\r\n\v\f";  // what a list line is trimmed of

void checkNet(std::string_view text) {
  NetAddr n;
  std::string err;
  if (!parseCidr(text, &n, &err)) {
    FUZZ_CHECK(!err.empty());
    return;
  }
  FUZZ_CHECK(n.family == 4 || n.family == 6);
  FUZZ_CHECK(n.prefix <= (n.family == 4 ? 32 : 128));
  FUZZ_CHECK(n.masked(n.prefix) == n);
  FUZZ_CHECK(n.contains(n));
  NetAddr back;
  FUZZ_CHECK(parseCidr(n.text(), &back));
  FUZZ_CHECK(back == n);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  // Every line (and the whole input) through parseCidr.
  checkNet(in);
  std::vector<NetAddr> nets;
  bool all_good = true;
  size_t lines = 0;
  for (std::string_view rest = in; !rest.empty();) {
    const size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    lines++;
    checkNet(line);
    const size_t hash = line.find('#');
    if (hash != std::string_view::npos) line = line.substr(0, hash);
    while (!line.empty() && kSpace.find(line.front()) != std::string_view::npos) line.remove_prefix(1);
    while (!line.empty() && kSpace.find(line.back()) != std::string_view::npos) line.remove_suffix(1);
    if (line.empty()) continue;
    NetAddr n;
    if (parseCidr(line, &n))
      nets.push_back(n);
    else
      all_good = false;
  }

  IpSet set;
  std::string err;
  const bool ok = set.addLines(in, "f", &err);
  FUZZ_CHECK(ok == all_good);
  if (!ok) {
    FUZZ_CHECK(err.rfind("f:", 0) == 0);
    const size_t line_no = std::stoul(err.substr(2));
    FUZZ_CHECK(line_no >= 1 && line_no <= lines);
    return 0;
  }
  set.finish();
  FUZZ_CHECK(set.size() <= nets.size());
  for (const NetAddr& n : nets) FUZZ_CHECK(set.contains(n));
  // Probes: each network's first address and the addresses just outside it.
  for (const NetAddr& n : nets) {
    NetAddr probes[3] = {n, n, n};
    for (NetAddr& p : probes) p.prefix = n.family == 4 ? 32 : 128;
    const int width = n.family == 4 ? 4 : 16;
    // one below the network start
    for (int i = width - 1; i >= 0; i--)
      if (probes[1].bytes[i]-- != 0) break;
    // one past its end: start + 2^(width*8 - prefix)
    {
      const int bit = width * 8 - n.prefix;  // add 1 << bit
      int i = width - 1 - bit / 8;
      if (i >= 0) {
        unsigned carry = 1u << (bit % 8);
        for (; i >= 0 && carry; i--) {
          const unsigned v = probes[2].bytes[i] + carry;
          probes[2].bytes[i] = static_cast<uint8_t>(v);
          carry = v >> 8;
        }
      }
    }
    for (const NetAddr& p : probes) {
      const bool linear = std::any_of(nets.begin(), nets.end(), [&](const NetAddr& m) { return m.contains(p); });
      FUZZ_CHECK(set.contains(p) == linear);
    }
  }
  return 0;
}
