// libFuzzer target for the IMAP pre-auth command parser.
// Input: [config byte][split seed byte] data... The data is fed once whole and once in
// chunks whose sizes derive from the seed; both runs must give the same answers at the
// same offsets (split independence). Invariants: consumed <= input, kNeedMore consumes
// everything, every answer consumes at least one byte, tokens lie in the parser buffer.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/codec/imap_command.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::ImapCommandParser;
using mailgate::codec::ImapFeed;
using mailgate::codec::ImapLimits;
using mailgate::codec::ImapStatus;
using mailgate::codec::ImapVerb;

using mailgate::fuzz::Chunker;

std::string record(const ImapCommandParser& p, ImapStatus s, size_t pos) {
  std::string out = std::to_string(static_cast<int>(s)) + "@" + std::to_string(pos) + ":";
  switch (s) {
    case ImapStatus::kCommand: {
      const auto& c = p.command();
      FUZZ_CHECK(p.ownsView(c.tag) && p.ownsView(c.verb_text));
      FUZZ_CHECK(!c.tag.empty() && !c.verb_text.empty());
      FUZZ_CHECK(c.verb != ImapVerb::kUnknown);
      FUZZ_CHECK(c.argc <= 64);
      out.append(c.tag).append(" ").append(c.verb_text);
      for (uint32_t i = 0; i < c.argc; ++i) {
        FUZZ_CHECK(p.ownsView(c.args[i].value));
        out.append(" ").append(c.args[i].value);
        if (c.args[i].is_nil) out += "!";
      }
      break;
    }
    case ImapStatus::kSaslLine:
      FUZZ_CHECK(p.ownsView(p.saslLine()));
      out.append(p.saslLine());
      break;
    case ImapStatus::kError:
    case ImapStatus::kFatal:
      FUZZ_CHECK(!p.errorText().empty());
      if (p.errorTag() != "*") FUZZ_CHECK(p.ownsView(p.errorTag()));
      out.append(p.errorTag()).append(" ").append(p.errorText());
      break;
    case ImapStatus::kContinuation:
    case ImapStatus::kNeedMore:
      break;
  }
  return out;
}

std::vector<std::string> run(std::string_view in, const ImapLimits& lim, uint32_t seed) {
  ImapCommandParser p(lim);
  std::vector<std::string> ev;
  Chunker ch{seed};
  size_t pos = 0;
  while (pos < in.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    while (true) {
      const ImapFeed f = p.feed(chunk);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == ImapStatus::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      FUZZ_CHECK(f.consumed > 0);  // progress
      ev.push_back(record(p, f.status, pos));
      switch (f.status) {
        case ImapStatus::kFatal:
          FUZZ_CHECK(p.feed(chunk).consumed == 0);
          return ev;
        case ImapStatus::kCommand:
          FUZZ_CHECK(!p.hasPending());
          if (p.command().verb == ImapVerb::kStarttls) p.reset();
          if (p.command().verb == ImapVerb::kAuthenticate && p.command().argc == 1) p.expectSaslLine();
          break;
        case ImapStatus::kSaslLine:
          FUZZ_CHECK(!p.hasPending());
          if (p.saslLine().size() % 2 == 1) p.expectSaslLine();  // content-derived: same in both runs
          break;
        case ImapStatus::kError:
          FUZZ_CHECK(!p.hasPending());
          break;
        case ImapStatus::kContinuation:
          FUZZ_CHECK(p.hasPending());
          break;
        case ImapStatus::kNeedMore:
          break;
      }
      if (chunk.empty()) break;
    }
  }
  return ev;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t cfg = data[0];
  const uint8_t seed = data[1];
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  ImapLimits lim;
  if ((cfg & 3) != 0) {  // mostly small limits, so that the fuzzer reaches them
    lim.max_line = 8 + ((cfg >> 1) & 63);
    lim.max_literal = (cfg >> 4) & 15;
    lim.max_args = 1 + ((cfg >> 3) & 7);
  }
  const auto whole = run(in, lim, 0);
  const auto split = run(in, lim, 1u + seed);
  FUZZ_CHECK(whole == split);
  return 0;
}
