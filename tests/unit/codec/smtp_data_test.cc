#include "gateway/codec/smtp_data.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using namespace std::string_literals;

const char* errName(SmtpDataError e) {
  switch (e) {
    case SmtpDataError::kNone:
      return "ok";
    case SmtpDataError::kBareLf:
      return "bare-lf";
    case SmtpDataError::kBareCr:
      return "bare-cr";
    case SmtpDataError::kNul:
      return "nul";
    case SmtpDataError::kLineTooLong:
      return "line-too-long";
    case SmtpDataError::kTooBig:
      return "too-big";
  }
  return "?";
}

struct Outcome {
  std::string status;  // "end@N", "more", "fatal@N"
  std::string error;
  uint64_t error_offset = 0;
  std::string body;
  bool operator==(const Outcome& o) const {
    return status == o.status && error == o.error && error_offset == o.error_offset && body == o.body;
  }
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << "{" << o.status << " " << o.error << "@" << o.error_offset << " body=" << testing::PrintToString(o.body)
            << "}";
}

Outcome runData(const std::string& in, const std::vector<size_t>& cuts, SmtpDataLimits lim = {}) {
  SmtpDataDecoder d(lim);
  std::string body;
  SmtpStringSink sink(&body);
  Outcome o;
  o.status = "more";
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  size_t start = 0, pos = 0;
  for (size_t b : bounds) {
    std::string_view chunk(in.data() + start, b - start);
    start = b;
    const SmtpDataFeed f = d.feed(chunk, sink);
    EXPECT_LE(f.consumed, chunk.size());
    pos += f.consumed;
    if (f.status == SmtpDataStatus::kEnd) {
      o.status = "end@" + std::to_string(pos);
      break;
    }
    if (f.status == SmtpDataStatus::kFatal) {
      o.status = "fatal@" + std::to_string(pos);
      break;
    }
    EXPECT_EQ(f.consumed, chunk.size());
  }
  o.error = errName(d.error());
  o.error_offset = d.errorOffset();
  o.body = body;
  return o;
}

void checkAllSplits(const std::string& in, const Outcome& want, SmtpDataLimits lim = {}) {
  const Outcome whole = runData(in, {}, lim);
  EXPECT_EQ(whole, want) << "whole";
  std::vector<size_t> every;
  for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
  EXPECT_EQ(runData(in, every, lim), whole) << "byte by byte";
  for (size_t k = 0; k <= in.size(); ++k) EXPECT_EQ(runData(in, {k}, lim), whole) << "split at " << k;
  for (size_t k = 0; k + 1 < in.size() && in.size() < 200; ++k) {
    for (size_t m = k + 1; m < in.size(); ++m) EXPECT_EQ(runData(in, {k, m}, lim), whole) << k << "," << m;
  }
}

Outcome ok(size_t end, std::string body) { return {"end@" + std::to_string(end), "ok", 0, std::move(body)}; }

TEST(SmtpDataDecoder, Basic) {
  const std::string in = "Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n";
  checkAllSplits(in, ok(in.size() - 6, "Subject: hi\r\n\r\nhello\r\n"));
}

TEST(SmtpDataDecoder, EmptyMessage) {
  checkAllSplits(".\r\n", ok(3, ""));
  checkAllSplits(".\r\nMAIL FROM:<>\r\n", ok(3, ""));
}

TEST(SmtpDataDecoder, DotUnstuffing) {
  const std::string in = "..\r\n...x\r\n.y\r\na.b\r\n.\r\n";
  checkAllSplits(in, ok(in.size(), ".\r\n..x\r\ny\r\na.b\r\n"));
}

TEST(SmtpDataDecoder, DotNotAtLineStartIsText) {
  const std::string in = "a\r\nb.\r\n.\r\n";
  checkAllSplits(in, ok(in.size(), "a\r\nb.\r\n"));
}

// Each smuggling variant: the data does NOT end there; the error is reported; the end
// is found only at the true <CRLF>.<CRLF>, after which a second "message" would follow.
struct Smuggle {
  const char* name;
  std::string marker;
  const char* error;
  size_t error_at;  // offset within the marker of the octet where the error is detected
};

TEST(SmtpDataDecoder, SmugglingVariantsNeverEndData) {
  const std::vector<Smuggle> variants = {
      {"<LF>.<LF>", "\n.\n", "bare-lf", 0},
      {"<CR>.<CR>", "\r.\r", "bare-cr", 1},
      {"<LF>.<CR><LF>", "\n.\r\n", "bare-lf", 0},
      {"<CR><LF>.<LF>", "\r\n.\n", "bare-lf", 3},
      {"<CR><LF>.<CR>", "\r\n.\r", "bare-cr", 4},
      {"<CR>.<CR><LF>", "\r.\r\n", "bare-cr", 1},
      {"NUL", "\r\n.\0\r\n"s, "nul", 3},
  };
  const std::string head = "Subject: a\r\n\r\nbody";
  const std::string smuggled = "MAIL FROM:<evil@x.y>\r\nRCPT TO:<v@a.b>\r\nDATA\r\nSubject: b\r\n";
  const std::string tail = "\r\n.\r\n";
  for (const auto& v : variants) {
    SCOPED_TRACE(v.name);
    const std::string in = head + v.marker + smuggled + tail + "QUIT\r\n";
    Outcome want;
    want.status = "end@" + std::to_string(in.size() - 6);
    want.error = v.error;
    want.error_offset = head.size() + v.error_at;
    // The sink holds what came before the octet that revealed the error.
    std::string before = head + v.marker.substr(0, v.error_at);
    if (v.marker == "\r\n.\n") before = head + "\r\n";  // the "." was a stuffing candidate
    if (v.marker == "\r\n.\r") before = head + "\r\n";
    if (v.marker == "\r\n.\0\r\n"s) before = head + "\r\n";
    want.body = before;
    checkAllSplits(in, want);
  }
}

TEST(SmtpDataDecoder, BareLfEverywhere) {
  checkAllSplits("a\nb\r\n.\r\n", {"end@8", "bare-lf", 1, "a"});
  checkAllSplits("\n.\r\n.\r\n", {"end@7", "bare-lf", 0, ""});  // "\n." is not a line start
  checkAllSplits("\r\n\n.\r\n.\r\n", {"end@9", "bare-lf", 2, "\r\n"});
}

TEST(SmtpDataDecoder, BareCrEverywhere) {
  checkAllSplits("a\rb\r\n.\r\n", {"end@8", "bare-cr", 2, "a\r"});
  checkAllSplits("a\r\r\n.\r\n", {"end@7", "bare-cr", 2, "a\r"});
  checkAllSplits(".\r.\r\n.\r\n", {"end@8", "bare-cr", 2, ""});
}

TEST(SmtpDataDecoder, NulInText) { checkAllSplits("ab\0c\r\n.\r\n"s, {"end@9", "nul", 2, "ab"}); }

TEST(SmtpDataDecoder, LineLimit) {
  SmtpDataLimits lim;
  lim.max_line = 10;
  checkAllSplits("12345678\r\n.\r\n", ok(13, "12345678\r\n"), lim);                       // 10 octets
  checkAllSplits("123456789\r\nok\r\n.\r\n", {"end@18", "line-too-long", 10, "123456789\r"}, lim);  // 11
  // A stuffing dot counts: "." + 8 + CRLF = 11 octets on the wire.
  checkAllSplits(".12345678\r\n.\r\n", {"end@14", "line-too-long", 10, "12345678\r"}, lim);
  // Default: 1000 octets incl. CRLF.
  const std::string l998(998, 'x');
  checkAllSplits(l998 + "\r\n.\r\n", ok(1003, l998 + "\r\n"));
  const Outcome o = runData(l998 + "x\r\n.\r\n", {});
  EXPECT_EQ(o.error, "line-too-long");
  EXPECT_EQ(o.error_offset, 1000u);
  EXPECT_EQ(o.status, "end@1004");
}

TEST(SmtpDataDecoder, SizeLimit) {
  SmtpDataLimits lim;
  lim.max_message = 6;
  checkAllSplits("abcd\r\n.\r\n", ok(9, "abcd\r\n"), lim);
  checkAllSplits("abcde\r\nmore\r\n.\r\n", {"end@16", "too-big", 6, "abcde\r"}, lim);
  // Stuffing dots do not count.
  checkAllSplits("..cd\r\n.\r\n", ok(9, ".cd\r\n"), lim);
}

TEST(SmtpDataDecoder, FatalWithoutEndAfterError) {
  SmtpDataLimits lim;
  lim.max_discard = 20;
  std::string in = "a\nb" + std::string(30, 'x');
  const Outcome o = runData(in, {}, lim);
  EXPECT_EQ(o.status, "fatal@23");  // error at index 1; the 21st octet after it (index 22) is fatal
  EXPECT_EQ(o.error, "bare-lf");
  // Within the bound, the end is found.
  const Outcome p = runData("a\nb" + std::string(10, 'x') + "\r\n.\r\n", {}, lim);
  EXPECT_EQ(p.status, "end@18");
  // After kFatal / kEnd nothing more is consumed until reset().
  SmtpDataDecoder d(lim);
  std::string body;
  SmtpStringSink sink(&body);
  EXPECT_EQ(d.feed(".\r\n", sink).status, SmtpDataStatus::kEnd);
  EXPECT_EQ(d.feed("x", sink).consumed, 0u);
  d.reset();
  EXPECT_EQ(d.feed("x\r\n.\r\n", sink).status, SmtpDataStatus::kEnd);
  EXPECT_EQ(body, "x\r\n");
  EXPECT_EQ(d.messageSize(), 3u);
  EXPECT_EQ(d.rawOctets(), 6u);
}

TEST(SmtpDataDecoder, ErrorReplies) {
  EXPECT_EQ(smtpDataErrorReply(SmtpDataError::kTooBig).code, 552);
  EXPECT_EQ(smtpDataErrorReply(SmtpDataError::kTooBig).enhanced, "5.3.4");
  EXPECT_EQ(smtpDataErrorReply(SmtpDataError::kBareLf).code, 554);
  EXPECT_TRUE(isSmtpDataFramingError(SmtpDataError::kNul));
  EXPECT_FALSE(isSmtpDataFramingError(SmtpDataError::kLineTooLong));
}

TEST(SmtpDataDecoder, RandomSplitsMatchWhole) {
  std::mt19937 rng(2023);
  const char alphabet[] = {'a', '.', '\r', '\n', '\0', 'b'};
  for (int t = 0; t < 300; ++t) {
    std::string in;
    const size_t n = rng() % 60;
    for (size_t i = 0; i < n; ++i) in += alphabet[rng() % 6];
    if (rng() % 2) in += "\r\n.\r\n";
    SmtpDataLimits lim;
    lim.max_line = 1 + rng() % 12;
    lim.max_message = rng() % 40;
    lim.max_discard = rng() % 50;
    const Outcome whole = runData(in, {}, lim);
    for (int r = 0; r < 10; ++r) {
      std::vector<size_t> cuts;
      for (size_t i = 1; i < in.size(); ++i) {
        if (rng() % 3 == 0) cuts.push_back(i);
      }
      ASSERT_EQ(runData(in, cuts, lim), whole) << testing::PrintToString(in);
    }
  }
}

// ---- BDAT

struct BdatRun {
  std::vector<std::string> events;
  std::string body;
  std::string error;
  bool operator==(const BdatRun& o) const { return events == o.events && body == o.body && error == o.error; }
};

std::ostream& operator<<(std::ostream& os, const BdatRun& r) {
  os << "{";
  for (const auto& e : r.events) os << e << " ";
  return os << r.error << " body=" << testing::PrintToString(r.body) << "}";
}

// chunks: (size, last); the input holds the chunk octets back to back.
BdatRun runBdat(const std::string& in, const std::vector<std::pair<uint64_t, bool>>& chunks,
                const std::vector<size_t>& cuts, BdatLimits lim = {}, bool binary = false) {
  BdatDecoder d(lim);
  d.startMessage(binary);
  std::string body;
  SmtpStringSink sink(&body);
  BdatRun r;
  size_t ci = 0;
  d.startChunk(chunks[0].first, chunks[0].second);
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  size_t start = 0, pos = 0;
  for (size_t b : bounds) {
    std::string_view rest(in.data() + start, b - start);
    start = b;
    while (ci < chunks.size()) {
      const BdatFeed f = d.feed(rest, sink);
      rest.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == BdatStatus::kNeedMore) break;
      r.events.push_back((f.status == BdatStatus::kLast ? "last@" : "chunk@") + std::to_string(pos));
      if (++ci < chunks.size()) d.startChunk(chunks[ci].first, chunks[ci].second);
    }
  }
  r.body = body;
  r.error = std::string(errName(d.error())) + "@" + std::to_string(d.errorOffset());
  return r;
}

void checkBdat(const std::string& in, const std::vector<std::pair<uint64_t, bool>>& chunks, const BdatRun& want,
               BdatLimits lim = {}, bool binary = false) {
  const BdatRun whole = runBdat(in, chunks, {}, lim, binary);
  EXPECT_EQ(whole, want);
  for (size_t k = 0; k <= in.size(); ++k) EXPECT_EQ(runBdat(in, chunks, {k}, lim, binary), whole) << k;
  std::vector<size_t> every;
  for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
  EXPECT_EQ(runBdat(in, chunks, every, lim, binary), whole);
}

TEST(BdatDecoder, CountsExactly) {
  // ".\r\n" inside a chunk is data, not an end marker; no unstuffing.
  checkBdat("ab\r\n.\r\n..x\r\n", {{7, false}, {5, true}}, {{"chunk@7", "last@12"}, "ab\r\n.\r\n..x\r\n", "ok@0"});
}

TEST(BdatDecoder, CrlfAcrossChunks) {
  checkBdat("ab\r\ncd\r\n", {{3, false}, {5, true}}, {{"chunk@3", "last@8"}, "ab\r\ncd\r\n", "ok@0"});
}

TEST(BdatDecoder, ZeroLast) {
  checkBdat("ab\r\n", {{4, false}, {0, true}}, {{"chunk@4", "last@4"}, "ab\r\n", "ok@0"});
}

TEST(BdatDecoder, FramingErrors) {
  checkBdat("a\nb\r\n", {{5, true}}, {{"last@5"}, "a", "bare-lf@1"});
  checkBdat("a\rb\r\n", {{5, true}}, {{"last@5"}, "a\r", "bare-cr@2"});
  checkBdat("ab\0\r\n"s, {{5, true}}, {{"last@5"}, "ab", "nul@2"});
  checkBdat("ab\r", {{3, false}, {0, true}}, {{"chunk@3", "last@3"}, "ab\r", "bare-cr@3"});
  // Errors never change the octet count: the next chunk is still counted exactly.
  checkBdat("\n\nxyz", {{2, false}, {3, true}}, {{"chunk@2", "last@5"}, "", "bare-lf@0"});
}

TEST(BdatDecoder, BinaryMimeSkipsLineChecks) {
  checkBdat("a\nb\0\r"s, {{5, true}}, {{"last@5"}, "a\nb\0\r"s, "ok@0"}, {}, true);
}

TEST(BdatDecoder, SizeAndLineLimits) {
  BdatLimits lim;
  lim.max_message = 5;
  checkBdat("abcdef", {{3, false}, {3, true}}, {{"chunk@3", "last@6"}, "abcde", "too-big@5"}, lim);
  BdatLimits ll;
  ll.max_line = 4;
  checkBdat("ab\r\nabc\r\n", {{9, true}}, {{"last@9"}, "ab\r\nabc\r", "line-too-long@8"}, ll);
}

}  // namespace
}  // namespace mailgate::codec
