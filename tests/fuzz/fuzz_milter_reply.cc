// libFuzzer target for the milter reply parser (filters/milter_codec.h).
// Input: [limit byte][split seed byte] data... Fed whole and in seed-derived chunks;
// both runs must give the same replies and the same error. Invariants: consumed <=
// input, kNeedMore consumes everything offered, an error consumes nothing more, no
// reply's strings grow past the packet bound.
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/milter_codec.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::filters::MilterFeed;
using mailgate::filters::MilterReplyParser;
using mailgate::filters::MilterStatus;
using mailgate::fuzz::Chunker;

std::string run(std::string_view in, size_t max, uint32_t seed) {
  MilterReplyParser p(max);
  Chunker ch{seed};
  std::string out;
  size_t pos = 0;
  while (pos < in.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    pos += chunk.size();
    while (!chunk.empty()) {
      const MilterFeed f = p.feed(chunk);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      if (f.status == MilterStatus::kError) {
        FUZZ_CHECK(!p.errorText().empty());
        FUZZ_CHECK(p.feed(chunk).consumed == 0);
        return out + "ERR:" + std::string(p.errorText());
      }
      if (f.status == MilterStatus::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      const auto& r = p.reply();
      FUZZ_CHECK(r.name.size() + r.value.size() + r.text.size() <= max);
      out += std::string(1, r.command) + std::to_string(static_cast<int>(r.kind)) + ":" +
             std::to_string(r.index) + ":" + r.name + ":" + r.value + ":" + r.text + ":" +
             std::to_string(r.version) + "," + std::to_string(r.actions) + "," + std::to_string(r.protocol) +
             ";";
    }
  }
  return out + (p.midPacket() ? "MID" : "");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t max = (data[0] & 1) ? 1 + (data[0] >> 1) : 4096;
  const uint8_t seed = data[1];
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  FUZZ_CHECK(run(in, max, 0) == run(in, max, 1u + seed));
  return 0;
}
