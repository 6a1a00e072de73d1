// libFuzzer target for the SMTP command parser.
// Input: [config byte][split seed byte] data... The data is fed once whole and once in
// chunks whose sizes derive from the seed; both runs must give the same answers at the
// same offsets (split independence). Invariants: consumed <= input, kNeedMore consumes
// everything, every answer consumes at least one byte, views lie in the parser buffer,
// line limits hold, errors carry a code and text.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/codec/smtp_command.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::SmtpCommandParser;
using mailgate::codec::SmtpFeed;
using mailgate::codec::SmtpLimits;
using mailgate::codec::SmtpParserOptions;
using mailgate::codec::SmtpStatus;
using mailgate::codec::SmtpVerb;

using mailgate::fuzz::Chunker;

std::string record(const SmtpCommandParser& p, SmtpStatus s, size_t pos, const SmtpLimits& lim) {
  std::string out = std::to_string(static_cast<int>(s)) + "@" + std::to_string(pos) + ":";
  switch (s) {
    case SmtpStatus::kCommand: {
      const auto& c = p.command();
      FUZZ_CHECK(p.ownsView(c.verb_text) && p.ownsView(c.arg) && p.ownsView(c.path));
      FUZZ_CHECK(!c.verb_text.empty() || c.verb == SmtpVerb::kUnknown);  // " x": unknown, empty verb
      FUZZ_CHECK(c.verb_text.size() + 2 <= lim.max_sasl_line || c.verb_text.size() + 2 <= lim.max_line);
      FUZZ_CHECK(c.param_count <= mailgate::codec::kSmtpMaxParams);
      for (uint32_t i = 0; i < c.param_count; ++i) {
        FUZZ_CHECK(p.ownsView(c.params[i].keyword) && p.ownsView(c.params[i].value));
      }
      if (c.verb == SmtpVerb::kMail || c.verb == SmtpVerb::kRcpt) {
        FUZZ_CHECK(c.path.size() >= 2 && c.path.front() == '<' && c.path.back() == '>');
        FUZZ_CHECK(c.address.local_part.size() <= 64 && c.address.domain.size() <= 255);
        FUZZ_CHECK(c.address.domainLower().size() == c.address.domain.size());
      }
      out.append(c.verb_text).append("|").append(c.arg).append("|").append(c.path);
      out += "|" + std::to_string(c.size) + "|" + std::to_string(c.bdat_size);
      break;
    }
    case SmtpStatus::kSaslLine:
      FUZZ_CHECK(p.ownsView(p.saslLine()));
      FUZZ_CHECK(p.saslLine().size() + 2 <= lim.max_sasl_line);
      out.append(p.saslLine());
      break;
    case SmtpStatus::kError:
    case SmtpStatus::kFatal:
      FUZZ_CHECK(!p.errorText().empty() && p.errorCode() >= 500 && p.errorEnhanced().size() == 5);
      out += std::to_string(p.errorCode()) + " ";
      out.append(p.errorEnhanced()).append(" ").append(p.errorText());
      break;
    case SmtpStatus::kNeedMore:
      break;
  }
  return out;
}

std::vector<std::string> run(std::string_view in, const SmtpLimits& lim, const SmtpParserOptions& opt,
                             uint32_t seed) {
  SmtpCommandParser p(lim, opt);
  std::vector<std::string> ev;
  Chunker ch{seed};
  size_t pos = 0;
  uint64_t skip = 0;  // BDAT chunk octets, as the session would hand them to BdatDecoder
  while (pos < in.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    while (!chunk.empty()) {
      if (skip > 0) {
        const size_t k = skip < chunk.size() ? static_cast<size_t>(skip) : chunk.size();
        skip -= k;
        chunk.remove_prefix(k);
        pos += k;
        continue;
      }
      const SmtpFeed f = p.feed(chunk);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == SmtpStatus::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      FUZZ_CHECK(f.consumed > 0);
      ev.push_back(record(p, f.status, pos, lim));
      switch (f.status) {
        case SmtpStatus::kFatal:
          FUZZ_CHECK(p.feed(chunk).consumed == 0);
          return ev;
        case SmtpStatus::kCommand:
          FUZZ_CHECK(!p.hasPending());
          if (p.command().verb == SmtpVerb::kStarttls) p.reset();
          if (p.command().verb == SmtpVerb::kAuth && !p.command().has_initial_response) p.expectSaslLine();
          if (p.command().verb == SmtpVerb::kMail) p.setSmtpUtf8(p.command().smtputf8);
          if (p.command().verb == SmtpVerb::kBdat) skip = p.command().bdat_size;
          break;
        case SmtpStatus::kSaslLine:
          FUZZ_CHECK(!p.hasPending());
          if (p.saslLine().size() % 2 == 1) p.expectSaslLine();  // content-derived: same in both runs
          break;
        case SmtpStatus::kError:
          FUZZ_CHECK(!p.hasPending());
          break;
        case SmtpStatus::kNeedMore:
          break;
      }
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
  SmtpLimits lim;
  if ((cfg & 3) != 0) {  // mostly small limits, so that the fuzzer reaches them
    lim.max_line = 4 + ((cfg >> 2) & 63);
    lim.max_sasl_line = lim.max_line + ((cfg >> 4) & 15);
  }
  SmtpParserOptions opt;
  opt.allow_space_after_colon = (cfg & 0x40) != 0;
  opt.strict_helo = (cfg & 0x80) == 0;
  const auto whole = run(in, lim, opt, 0);
  const auto split = run(in, lim, opt, 1u + seed);
  FUZZ_CHECK(whole == split);
  return 0;
}
