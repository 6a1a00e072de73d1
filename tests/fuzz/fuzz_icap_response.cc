// libFuzzer target for the ICAP response parser (filters/icap_codec.h).
// Input: [limits byte][split seed byte] data... Fed whole and in seed-derived chunks,
// as one stream of responses (a 100 Continue is followed by the next response, as on
// a connection); both runs must give the same events, body, consumed count and
// fields. Invariants: consumed <= input, kNeedMore consumes everything, a finished
// response consumes nothing more, the body never grows past its bound.
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/icap_codec.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::filters::IcapFeed;
using mailgate::filters::IcapLimits;
using mailgate::filters::IcapResponseParser;
using mailgate::filters::IcapStatus;
using mailgate::fuzz::Chunker;

std::string run(std::string_view in, const IcapLimits& limits, uint32_t seed) {
  IcapResponseParser p(limits);
  Chunker ch{seed};
  std::string out;
  size_t pos = 0;
  unsigned responses = 0;
  while (pos < in.size() && responses < 8) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    bool ended = false;
    while (!chunk.empty()) {
      const IcapFeed f = p.feed(chunk);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == IcapStatus::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      if (f.status == IcapStatus::kBody) {
        FUZZ_CHECK(!f.body.empty());
        out.append(f.body);
        continue;
      }
      out += "|" + std::to_string(static_cast<int>(f.status)) + "@" + std::to_string(pos);
      if (f.status == IcapStatus::kHeaders) continue;
      FUZZ_CHECK(p.feed(chunk).consumed == 0);
      const auto& r = p.response();
      FUZZ_CHECK(r.body_size <= limits.max_body);
      out += "|" + std::to_string(r.code) + r.reason + r.istag + r.http_header + r.infectionName() +
             std::to_string(r.httpStatus()) + std::string(p.error());
      if (f.status == IcapStatus::kError) {
        FUZZ_CHECK(!p.error().empty());
        return out;
      }
      // kDone: the next response on the same stream.
      responses++;
      p.reset();
      ended = true;
      break;
    }
    (void)ended;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  IcapLimits limits;
  if (data[0] & 1) {
    limits.max_line = 16 + (data[0] >> 1);
    limits.max_headers = 64 + 4 * (data[0] >> 1);
    limits.max_http_header = 8 + (data[0] >> 2);
    limits.max_body = 1 + (data[0] >> 1);
  }
  const uint8_t seed = data[1];
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  FUZZ_CHECK(run(in, limits, 0) == run(in, limits, 1u + seed));
  return 0;
}
