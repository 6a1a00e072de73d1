// libFuzzer target for clamd's reply parser (filters/clamd_codec.h).
// Input: [limit byte][split seed byte] data... Fed whole and in seed-derived chunks;
// both runs must give the same status, consumed count, name and error. Invariants:
// consumed <= input, kNeedMore consumes everything, a complete reply consumes
// nothing more, the reply never grows past its bound.
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/clamd_codec.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::filters::ClamdFeed;
using mailgate::filters::ClamdReplyParser;
using mailgate::filters::ClamdStatus;
using mailgate::fuzz::Chunker;

std::string run(std::string_view in, size_t max, uint32_t seed, bool finish) {
  ClamdReplyParser p(max);
  Chunker ch{seed};
  size_t pos = 0;
  ClamdStatus st = ClamdStatus::kNeedMore;
  while (pos < in.size()) {
    const std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    const ClamdFeed f = p.feed(chunk);
    FUZZ_CHECK(f.consumed <= chunk.size());
    pos += f.consumed;
    st = f.status;
    if (st == ClamdStatus::kNeedMore) {
      FUZZ_CHECK(f.consumed == chunk.size());
      continue;
    }
    FUZZ_CHECK(p.feed(in.substr(pos)).consumed == 0);
    FUZZ_CHECK(p.feed(in.substr(pos)).status == st);
    break;
  }
  if (finish) st = p.finish();
  FUZZ_CHECK(p.virusName().size() <= max);
  FUZZ_CHECK(p.errorText().size() <= max + 64);
  if (st == ClamdStatus::kFound) FUZZ_CHECK(!p.virusName().empty());
  if (st == ClamdStatus::kError) FUZZ_CHECK(!p.errorText().empty());
  return std::to_string(static_cast<int>(st)) + "@" + std::to_string(pos) + "|" + std::string(p.virusName()) +
         "|" + std::string(p.errorText());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t max = (data[0] & 1) ? 1 + (data[0] >> 1) : ClamdReplyParser::kDefaultMaxReply;
  const uint8_t seed = data[1];
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  FUZZ_CHECK(run(in, max, 0, false) == run(in, max, 1u + seed, false));
  FUZZ_CHECK(run(in, max, 0, true) == run(in, max, 1u + seed, true));
  return 0;
}
