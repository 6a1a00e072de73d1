// libFuzzer target for the SMTP/LMTP reply parser and the EHLO keyword reader.
// Input: [config byte][split seed byte] data... Fed whole and in seed-derived chunks;
// both runs must give the same replies at the same offsets. Invariants: consumed <=
// input, kNeedMore consumes everything, each reply consumes at least one byte, views
// lie in the parser buffer, codes are 200-559, line counts within the limit.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/codec/smtp_reply.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::SmtpEhlo;
using mailgate::codec::SmtpReplyFeed;
using mailgate::codec::SmtpReplyLimits;
using mailgate::codec::SmtpReplyParser;
using mailgate::codec::SmtpReplyStatus;

using mailgate::fuzz::Chunker;

std::string record(const SmtpReplyParser& p, SmtpReplyStatus s, size_t pos, const SmtpReplyLimits& lim) {
  std::string out = std::to_string(static_cast<int>(s)) + "@" + std::to_string(pos) + ":";
  if (s == SmtpReplyStatus::kError) {
    FUZZ_CHECK(!p.errorText().empty());
    return out.append(p.errorText());
  }
  const auto& r = p.reply();
  FUZZ_CHECK(r.code >= 200 && r.code <= 559);
  FUZZ_CHECK(r.line_count >= 1 && r.line_count <= lim.max_lines);
  FUZZ_CHECK(p.ownsView(r.enhanced_text));
  if (r.enhanced.present()) FUZZ_CHECK(r.enhanced.cls == r.code / 100);
  out += std::to_string(r.code);
  for (uint32_t i = 0; i < r.line_count; ++i) {
    FUZZ_CHECK(p.ownsView(r.lines[i]));
    FUZZ_CHECK(r.lines[i].size() + 6 <= lim.max_line || r.lines[i].empty());
    out.append("|").append(r.lines[i]);
  }
  out.append("|").append(r.message());
  SmtpEhlo e;
  if (mailgate::codec::parseEhloReply(r, &e)) {
    FUZZ_CHECK(p.ownsView(e.domain) && p.ownsView(e.auth_raw) && p.ownsView(e.xclient_raw));
    out += "|" + std::to_string(e.size_limit) + "," + std::to_string(e.auth_mechs) + "," +
           std::to_string(e.xclient_attrs);
  }
  return out;
}

std::vector<std::string> run(std::string_view in, const SmtpReplyLimits& lim, uint32_t seed) {
  SmtpReplyParser p(lim);
  std::vector<std::string> ev;
  Chunker ch{seed};
  size_t pos = 0;
  while (pos < in.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    while (!chunk.empty()) {
      const SmtpReplyFeed f = p.feed(chunk);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == SmtpReplyStatus::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      FUZZ_CHECK(f.consumed > 0);
      ev.push_back(record(p, f.status, pos, lim));
      if (f.status == SmtpReplyStatus::kError) {
        FUZZ_CHECK(p.feed(chunk).consumed == 0);
        return ev;
      }
      FUZZ_CHECK(!p.hasPending());
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
  SmtpReplyLimits lim;
  if ((cfg & 1) != 0) {
    lim.max_line = 5 + ((cfg >> 1) & 31);
    lim.max_lines = 1 + ((cfg >> 6) & 3);
  }
  const auto whole = run(in, lim, 0);
  const auto split = run(in, lim, 1u + seed);
  FUZZ_CHECK(whole == split);
  return 0;
}
