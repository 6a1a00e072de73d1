// libFuzzer target for the relay's IMAP literal framing (ImapAppendGuard and
// ImapResponseFramer). Input: [limit byte][max_line byte][split seed byte] data...
// The data is fed once whole and once in chunks whose sizes derive from the seed; both
// runs must forward the same bytes and refuse at the same offsets. Invariants:
// consumed <= input; forwarded bytes are a subsequence of the input, in order, and
// with no refusal a prefix of it (the rest is held: a line not yet complete).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/codec/imap_literal_tracker.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::ImapAppendGuard;
using mailgate::codec::ImapResponseFramer;
using mailgate::fuzz::Chunker;

struct Result {
  std::string forwarded;
  std::vector<size_t> events;
};

Result run(std::string_view in, const ImapAppendGuard::Limits& lim, Chunker* chunker) {
  ImapAppendGuard g(lim);
  Result r;
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t n = chunker ? chunker->next(in.size() - pos) : in.size() - pos;
    std::string_view piece = in.substr(pos, n);
    size_t at = pos;
    pos += n;
    size_t stalls = 0;
    while (!piece.empty()) {
      const auto s = g.feed(piece);
      FUZZ_CHECK(s.consumed <= piece.size());
      if (s.consumed == 0)
        FUZZ_CHECK(++stalls < 4);  // progress within a few steps
      else
        stalls = 0;
      piece.remove_prefix(s.consumed);
      at += s.consumed;
      if (s.action == ImapAppendGuard::Action::kForward) r.forwarded.append(s.out);
      if (s.action == ImapAppendGuard::Action::kRefused || s.action == ImapAppendGuard::Action::kAbort)
        r.events.push_back(at);
    }
  }
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  ImapAppendGuard::Limits lim;
  lim.append_limit = 1 + data[0] % 64;
  lim.max_line = 8 + data[1];
  lim.max_swallow = 32;
  const uint32_t seed = data[2];
  const std::string_view in(reinterpret_cast<const char*>(data) + 3, size - 3);

  const Result whole = run(in, lim, nullptr);
  Chunker chunker{seed};
  const Result split = run(in, lim, &chunker);
  FUZZ_CHECK(whole.forwarded == split.forwarded);
  FUZZ_CHECK(whole.events == split.events);
  // Without a refusal the node gets the input unchanged (less what is still held).
  if (whole.events.empty()) FUZZ_CHECK(in.substr(0, whole.forwarded.size()) == whole.forwarded);
  // Forwarded bytes appear in the input in order.
  size_t j = 0;
  for (char c : whole.forwarded) {
    while (j < in.size() && in[j] != c) ++j;
    FUZZ_CHECK(j < in.size());
    ++j;
  }

  ImapResponseFramer f1, f2;
  f1.feed(in);
  Chunker c2{seed};
  for (size_t p = 0; p < in.size();) {
    const size_t n = c2.next(in.size() - p);
    f2.feed(in.substr(p, n));
    p += n;
  }
  FUZZ_CHECK(f1.atBoundary() == f2.atBoundary());
  return 0;
}
