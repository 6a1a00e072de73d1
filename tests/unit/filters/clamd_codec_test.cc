// clamd's INSTREAM framing and reply parser: every reply whole, one byte at a time,
// at every split point, and followed by more bytes.
#include "filters/clamd_codec.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mailgate::filters {
namespace {

struct Parsed {
  ClamdStatus status;
  size_t consumed;
  std::string name;
  std::string error;
};

Parsed parseInPieces(std::string_view in, const std::vector<size_t>& cuts, size_t max = 1024) {
  ClamdReplyParser p(max);
  size_t pos = 0, consumed = 0;
  ClamdStatus st = ClamdStatus::kNeedMore;
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  for (size_t b : bounds) {
    if (b < pos) continue;
    const ClamdFeed f = p.feed(in.substr(pos, b - pos));
    consumed += f.consumed;
    st = f.status;
    pos = b;
    if (st != ClamdStatus::kNeedMore) break;
  }
  return {st, consumed, std::string(p.virusName()), std::string(p.errorText())};
}

void expectAllSplits(std::string_view in, ClamdStatus want, size_t want_consumed,
                     const std::string& name = {}) {
  const Parsed whole = parseInPieces(in, {});
  EXPECT_EQ(whole.status, want) << in;
  EXPECT_EQ(whole.consumed, want_consumed) << in;
  EXPECT_EQ(whole.name, name);
  std::vector<size_t> bytes;
  for (size_t i = 1; i < in.size(); i++) bytes.push_back(i);
  const Parsed one = parseInPieces(in, bytes);
  EXPECT_EQ(one.status, want);
  EXPECT_EQ(one.consumed, want_consumed);
  EXPECT_EQ(one.name, name);
  for (size_t i = 0; i <= in.size(); i++) {
    const Parsed split = parseInPieces(in, {i});
    EXPECT_EQ(split.status, want) << "split at " << i;
    EXPECT_EQ(split.consumed, want_consumed) << "split at " << i;
    EXPECT_EQ(split.name, name);
  }
}

TEST(ClamdCodec, InstreamFraming) {
  EXPECT_EQ(clamdInstreamCommand(), std::string_view("zINSTREAM\0", 10));
  std::string out;
  clamdAppendChunk("abc", &out);
  EXPECT_EQ(out, std::string("\0\0\0\3abc", 7));
  out.clear();
  clamdAppendChunk(std::string(0x10203, 'x'), &out);
  EXPECT_EQ(out.substr(0, 4), std::string("\0\1\2\3", 4));
  EXPECT_EQ(out.size(), 4u + 0x10203u);
  out.clear();
  clamdAppendChunk({}, &out);
  EXPECT_EQ(out, std::string(4, '\0'));
}

TEST(ClamdCodec, Clean) {
  expectAllSplits(std::string_view("stream: OK\0", 11), ClamdStatus::kClean, 11);
  expectAllSplits("stream: OK\n", ClamdStatus::kClean, 11);
  // Pipelined bytes after the reply are not consumed.
  expectAllSplits(std::string_view("stream: OK\0stream: Eicar FOUND\0", 31), ClamdStatus::kClean, 11);
}

TEST(ClamdCodec, Found) {
  expectAllSplits(std::string_view("stream: Eicar-Test-Signature FOUND\0", 35), ClamdStatus::kFound, 35,
                  "Eicar-Test-Signature");
  expectAllSplits(std::string_view("stream: Win.Test.EICAR_HDB-1 FOUND\0", 35), ClamdStatus::kFound, 35,
                  "Win.Test.EICAR_HDB-1");
  // The name is data from the network: the parser keeps it as it came.
  expectAllSplits(std::string_view("stream: a\x01(b) FOUND\0", 20), ClamdStatus::kFound, 20, "a\x01(b)");
}

TEST(ClamdCodec, SizeLimitAndErrors) {
  expectAllSplits(std::string_view("INSTREAM size limit exceeded. ERROR\0", 36), ClamdStatus::kSizeLimit, 36);
  expectAllSplits(std::string_view("UNKNOWN COMMAND\0", 16), ClamdStatus::kError, 16);
  expectAllSplits(std::string_view("stream: Can't allocate memory ERROR\0", 36), ClamdStatus::kError, 36);
  expectAllSplits(std::string_view("stream:  FOUND\0", 15), ClamdStatus::kError, 15);
  expectAllSplits(std::string_view("\0", 1), ClamdStatus::kError, 1);
  const Parsed p = parseInPieces(std::string_view("UNKNOWN COMMAND\0", 16), {});
  EXPECT_EQ(p.error, "UNKNOWN COMMAND");
}

TEST(ClamdCodec, ReplyIsBounded) {
  const std::string long_reply = "stream: " + std::string(2000, 'A') + " FOUND";
  const Parsed p = parseInPieces(long_reply, {});
  EXPECT_EQ(p.status, ClamdStatus::kError);
  EXPECT_EQ(p.consumed, 1024u);
  EXPECT_NE(p.error.find("longer than 1024"), std::string::npos);
  const Parsed q = parseInPieces(long_reply, {3, 500, 1023, 1024, 1500});
  EXPECT_EQ(q.status, ClamdStatus::kError);
  EXPECT_EQ(q.consumed, 1024u);
  // Exactly at the bound is fine.
  const std::string at_bound = "stream: " + std::string(1024 - 8 - 6, 'B') + " FOUND";
  EXPECT_EQ(parseInPieces(at_bound + '\0', {}).status, ClamdStatus::kFound);
}

TEST(ClamdCodec, FinishAndAfterTheReply) {
  ClamdReplyParser p;
  EXPECT_EQ(p.feed("stream: O").status, ClamdStatus::kNeedMore);
  EXPECT_EQ(p.finish(), ClamdStatus::kError);
  EXPECT_NE(p.errorText().find("middle"), std::string_view::npos);
  ClamdReplyParser q;
  EXPECT_EQ(q.finish(), ClamdStatus::kError);
  EXPECT_NE(q.errorText().find("without a reply"), std::string_view::npos);
  ClamdReplyParser r;
  EXPECT_EQ(r.feed(std::string_view("stream: OK\0", 11)).status, ClamdStatus::kClean);
  const ClamdFeed again = r.feed("more");
  EXPECT_EQ(again.status, ClamdStatus::kClean);
  EXPECT_EQ(again.consumed, 0u);
  EXPECT_EQ(r.finish(), ClamdStatus::kClean);
}

}  // namespace
}  // namespace mailgate::filters
