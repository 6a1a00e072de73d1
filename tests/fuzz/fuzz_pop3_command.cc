// libFuzzer target for the POP3 AUTHORIZATION-state command parser.
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

#include "gateway/codec/pop3_command.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::Pop3CommandParser;
using mailgate::codec::Pop3Feed;
using mailgate::codec::Pop3Limits;
using mailgate::codec::Pop3Status;
using mailgate::codec::Pop3Verb;

using mailgate::fuzz::Chunker;

std::string record(const Pop3CommandParser& p, Pop3Status s, size_t pos) {
  std::string out = std::to_string(static_cast<int>(s)) + "@" + std::to_string(pos) + ":";
  switch (s) {
    case Pop3Status::kCommand: {
      const auto& c = p.command();
      FUZZ_CHECK(p.ownsView(c.verb_text));
      FUZZ_CHECK(c.verb_text.size() >= 3 && c.verb_text.size() <= 4);
      FUZZ_CHECK(c.verb != Pop3Verb::kUnknown);
      FUZZ_CHECK(c.argc <= 4);
      out.append(c.verb_text);
      for (uint32_t i = 0; i < c.argc; ++i) {
        FUZZ_CHECK(p.ownsView(c.args[i]));
        FUZZ_CHECK(!c.args[i].empty());
        out.append(" ").append(c.args[i]);
      }
      break;
    }
    case Pop3Status::kSaslLine:
      FUZZ_CHECK(p.ownsView(p.saslLine()));
      out.append(p.saslLine());
      break;
    case Pop3Status::kError:
    case Pop3Status::kFatal:
      FUZZ_CHECK(!p.errorText().empty());
      out.append(p.errorText());
      break;
    case Pop3Status::kNeedMore:
      break;
  }
  return out;
}

std::vector<std::string> run(std::string_view in, const Pop3Limits& lim, uint32_t seed) {
  Pop3CommandParser p(lim);
  std::vector<std::string> ev;
  Chunker ch{seed};
  size_t pos = 0;
  while (pos < in.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    while (true) {
      const Pop3Feed f = p.feed(chunk);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == Pop3Status::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      FUZZ_CHECK(f.consumed > 0);  // progress
      ev.push_back(record(p, f.status, pos));
      switch (f.status) {
        case Pop3Status::kFatal:
          FUZZ_CHECK(p.feed(chunk).consumed == 0);
          return ev;
        case Pop3Status::kCommand:
          FUZZ_CHECK(!p.hasPending());
          if (p.command().verb == Pop3Verb::kStls) p.reset();
          if (p.command().verb == Pop3Verb::kAuth && p.command().argc == 1) p.expectSaslLine();
          break;
        case Pop3Status::kSaslLine:
          FUZZ_CHECK(!p.hasPending());
          if (p.saslLine().size() % 2 == 1) p.expectSaslLine();  // content-derived: same in both runs
          break;
        case Pop3Status::kError:
          FUZZ_CHECK(!p.hasPending());
          break;
        case Pop3Status::kNeedMore:
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
  Pop3Limits lim;
  if ((cfg & 1) != 0) {  // small limits, so that the fuzzer reaches them
    lim.max_line = 4 + ((cfg >> 1) & 31);
    lim.max_sasl_line = 4 + ((cfg >> 3) & 31);
  }
  const auto whole = run(in, lim, 0);
  const auto split = run(in, lim, 1u + seed);
  FUZZ_CHECK(whole == split);
  return 0;
}
