#include "gateway/codec/imap_literal_tracker.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using Action = ImapAppendGuard::Action;
using Reason = ImapAppendGuard::Reason;

struct Outcome {
  std::string forwarded;            // what the node would receive
  std::vector<std::string> events;  // refusals and aborts, with the input offset after them
  bool operator==(const Outcome&) const = default;
};

// Feeds `in` in pieces of the sizes chunk() gives; the session's loop.
template <typename Chunk>
Outcome run(std::string_view in, ImapAppendGuard::Limits lim, Chunk chunk) {
  ImapAppendGuard g(lim);
  Outcome o;
  size_t pos = 0;
  while (pos < in.size()) {
    std::string_view piece = in.substr(pos, std::min(chunk(), in.size() - pos));
    pos += piece.size();
    const size_t piece_end = pos;
    while (!piece.empty()) {
      const auto s = g.feed(piece);
      EXPECT_LE(s.consumed, piece.size());
      const size_t at = piece_end - piece.size() + s.consumed;
      piece.remove_prefix(s.consumed);
      switch (s.action) {
        case Action::kForward:
          o.forwarded.append(s.out);
          break;
        case Action::kNeedMore:
          break;
        case Action::kRefused:
          o.events.push_back(std::string(g.reason() == Reason::kTooBig ? "TOOBIG " : "LONG ") +
                             std::string(g.tag()) + " " + std::to_string(g.literalSize()) +
                             (g.closeNeeded() ? " close" : "") + " @" + std::to_string(at));
          break;
        case Action::kAbort:
          o.events.push_back("abort @" + std::to_string(at));
          break;
      }
    }
  }
  return o;
}

// Whole, one byte at a time, and at random split points: the same outcome each way.
Outcome check(std::string_view in, uint64_t limit, size_t max_line = 8192) {
  ImapAppendGuard::Limits lim{limit, max_line, 64 * 1024};
  const Outcome whole = run(in, lim, [&] { return in.size(); });
  const Outcome bytes = run(in, lim, [] { return size_t{1}; });
  EXPECT_EQ(whole, bytes) << "byte by byte differs";
  std::mt19937 rng(42);
  for (int i = 0; i < 20; ++i) {
    const Outcome split = run(in, lim, [&] { return size_t{1} + rng() % 17; });
    EXPECT_EQ(whole, split) << "random split differs";
  }
  return whole;
}

TEST(ImapAppendGuard, OtherCommandsPassUnchanged) {
  const std::string in =
      "a1 SELECT INBOX\r\na2 UID FETCH 1:* (FLAGS BODY.PEEK[])\r\na3 IDLE\r\nDONE\r\n\r\n"
      "a4 SEARCH TEXT {5}\r\nhello\r\na5 LOGOUT\r\n";
  const Outcome o = check(in, 100);
  EXPECT_EQ(o.forwarded, in);
  EXPECT_TRUE(o.events.empty());
}

TEST(ImapAppendGuard, AppendWithinTheLimitPasses) {
  const std::string in = "a APPEND INBOX (\\Seen) {5}\r\nhello\r\nb NOOP\r\n";
  EXPECT_EQ(check(in, 5).forwarded, in);
  const std::string plus = "a append INBOX {5+}\r\nhello\r\n";
  EXPECT_EQ(check(plus, 5).forwarded, plus);
}

TEST(ImapAppendGuard, SynchronizingLiteralOverTheLimitIsNotForwarded) {
  const Outcome o = check("A7 Append INBOX {999999999}\r\nb NOOP\r\n", 1000);
  EXPECT_EQ(o.forwarded, "b NOOP\r\n");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0], "TOOBIG A7 999999999 @29");
}

TEST(ImapAppendGuard, BinaryLiteralCountsToo) {
  const Outcome o = check("a APPEND INBOX ~{2000}\r\n", 1000);
  EXPECT_EQ(o.forwarded, "");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0], "TOOBIG a 2000 @24");
}

TEST(ImapAppendGuard, SmallNonSynchronizingLiteralIsSwallowed) {
  const Outcome o = check("a APPEND INBOX {10+}\r\n0123456789\r\nb NOOP\r\n", 4);
  EXPECT_EQ(o.forwarded, "b NOOP\r\n");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0], "TOOBIG a 10 @22");
}

TEST(ImapAppendGuard, LargeNonSynchronizingLiteralCloses) {
  const Outcome o = check("a APPEND INBOX {999999+}\r\nxxxxxxxxxxxxxxxx b NOOP\r\n", 4);
  EXPECT_EQ(o.forwarded, "");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0], "TOOBIG a 999999 close @26");
}

TEST(ImapAppendGuard, MultiappendLaterLiteralOverTheLimitCloses) {
  const std::string ok = "a APPEND INBOX {3}\r\nabc (\\Seen) {4}\r\nabcd\r\n";
  EXPECT_EQ(check(ok, 10).forwarded, ok);
  const Outcome o = check("a APPEND INBOX {3}\r\nabc {20}\r\n", 10);
  EXPECT_EQ(o.forwarded, "a APPEND INBOX {3}\r\nabc");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0], "TOOBIG a 20 close @30");
}

TEST(ImapAppendGuard, LiteralDataIsNotParsedAsCommands) {
  const std::string body = "b APPEND INBOX {99999}\r\n";
  const std::string in = "a SEARCH TEXT {" + std::to_string(body.size()) + "}\r\n" + body + "\r\n";
  const Outcome o = check(in, 10);
  EXPECT_EQ(o.forwarded, in);
  EXPECT_TRUE(o.events.empty());
}

TEST(ImapAppendGuard, OversizedSizeSaturates) {
  const Outcome o = check("a APPEND INBOX {99999999999999999999999999}\r\n", 10);
  EXPECT_EQ(o.forwarded, "");
  ASSERT_EQ(o.events.size(), 1u);
}

TEST(ImapAppendGuard, LongAppendLineIsRefused) {
  std::string in = "a APPEND INBOX " + std::string(100, 'x') + " {5}\r\nb NOOP\r\n";
  const Outcome o = check(in, 10, 64);
  EXPECT_EQ(o.forwarded, "b NOOP\r\n");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0].rfind("LONG a 0 @", 0), 0u) << o.events[0];
}

TEST(ImapAppendGuard, LongTagIsRefused) {
  std::string in = std::string(100, 't') + " APPEND INBOX {99999}\r\nb NOOP\r\n";
  const Outcome o = check(in, 10, 64);
  EXPECT_EQ(o.forwarded, "b NOOP\r\n");
  ASSERT_EQ(o.events.size(), 1u);
  EXPECT_EQ(o.events[0], "LONG * 0 @64");
}

TEST(ImapAppendGuard, LongLinesOfOtherCommandsPass) {
  std::string in = "a SEARCH " + std::string(10000, 'x') + "\r\n";
  EXPECT_EQ(check(in, 10, 64).forwarded, in);
}

TEST(ImapAppendGuard, CompressEndsTheWatch) {
  const std::string in = "a COMPRESS DEFLATE\r\n\x01\x02 b APPEND INBOX {99999}\r\n";
  const Outcome o = check(in, 10);
  EXPECT_EQ(o.forwarded, in);
  EXPECT_TRUE(o.events.empty());
}

TEST(ImapAppendGuard, ZeroLengthLiteral) {
  const std::string in = "a APPEND INBOX {0}\r\n\r\nb NOOP\r\n";
  EXPECT_EQ(check(in, 10).forwarded, in);
}

TEST(ImapResponseFramer, BoundariesSkipLiterals) {
  ImapResponseFramer f;
  EXPECT_TRUE(f.atBoundary());
  f.feed("* 1 FETCH (BODY[] {12}\r\n");
  EXPECT_FALSE(f.atBoundary());
  f.feed("line one\r\n");
  EXPECT_FALSE(f.atBoundary());
  f.feed("\r\n");  // the literal's last two octets
  EXPECT_FALSE(f.atBoundary());
  f.feed(")\r\n");
  EXPECT_TRUE(f.atBoundary());
  f.feed("a OK do");
  EXPECT_FALSE(f.atBoundary());
  f.feed("ne\r\n");
  EXPECT_TRUE(f.atBoundary());
}

}  // namespace
}  // namespace mailgate::codec

namespace mailgate::codec {
namespace {

// The vectors one after the other, as a pipelining client sends them.
TEST(ImapAppendGuard, ConcatenatedVectors) {
  const std::string a = "a1 SELECT INBOX\r\n";
  const std::string b = "a2 APPEND INBOX {5}\r\nhello\r\n";
  const std::string refused = "a3 APPEND INBOX {50}\r\n";
  const std::string swallowed = "a4 APPEND INBOX {20+}\r\n01234567890123456789\r\n";
  const std::string c = "a5 SEARCH TEXT {3}\r\nabc\r\n";
  const Outcome o = check(a + b + refused + swallowed + c + "DONE\r\n", 10);
  EXPECT_EQ(o.forwarded, a + b + c + "DONE\r\n");
  ASSERT_EQ(o.events.size(), 2u);
  EXPECT_EQ(o.events[0].rfind("TOOBIG a3 50 @", 0), 0u);
  EXPECT_EQ(o.events[1].rfind("TOOBIG a4 20 @", 0), 0u);
}

}  // namespace
}  // namespace mailgate::codec
