// The milter protocol codec: request packets byte for byte, and every reply fed
// whole, one byte at a time, at every split point and pipelined with others.
#include "filters/milter_codec.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mailgate::filters {
namespace {

using namespace std::string_literals;

std::string be32(uint32_t v) {
  std::string s;
  s.push_back(static_cast<char>(v >> 24));
  s.push_back(static_cast<char>(v >> 16));
  s.push_back(static_cast<char>(v >> 8));
  s.push_back(static_cast<char>(v));
  return s;
}

std::string packet(char cmd, std::string_view data) {
  return be32(static_cast<uint32_t>(data.size() + 1)) + cmd + std::string(data);
}

// Parses the stream fed in pieces cut at `cuts`; the replies in order, and "ERR:..." for an error.
std::vector<std::string> parse(std::string_view in, const std::vector<size_t>& cuts, size_t max = 1 << 20) {
  MilterReplyParser p(max);
  std::vector<std::string> out;
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  size_t pos = 0;
  for (size_t b : bounds) {
    if (b < pos) continue;
    std::string_view piece = in.substr(pos, b - pos);
    pos = b;
    while (!piece.empty()) {
      const MilterFeed f = p.feed(piece);
      EXPECT_LE(f.consumed, piece.size());
      piece.remove_prefix(f.consumed);
      if (f.status == MilterStatus::kError) {
        out.push_back("ERR:" + std::string(p.errorText()));
        return out;
      }
      if (f.status == MilterStatus::kNeedMore) {
        EXPECT_TRUE(piece.empty());
        break;
      }
      const MilterReply& r = p.reply();
      out.push_back(std::string(1, r.command) + "|" + std::to_string(static_cast<int>(r.kind)) + "|" +
                    std::to_string(r.index) + "|" + r.name + "|" + r.value + "|" + r.text + "|" +
                    std::to_string(r.version) + "," + std::to_string(r.actions) + "," +
                    std::to_string(r.protocol));
    }
  }
  return out;
}

// Whole, byte by byte and at every single split point: the same answer.
std::vector<std::string> parseEveryWay(std::string_view in, size_t max = 1 << 20) {
  const auto whole = parse(in, {}, max);
  std::vector<size_t> every;
  for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
  EXPECT_EQ(parse(in, every, max), whole) << "byte by byte";
  for (size_t i = 1; i < in.size(); ++i) EXPECT_EQ(parse(in, {i}, max), whole) << "split at " << i;
  return whole;
}

TEST(MilterCodec, OptnegPacket) {
  std::string out;
  milterOptneg(0x1ff, 0x1fffff, &out);
  EXPECT_EQ(out, be32(13) + "O" + be32(6) + be32(0x1ff) + be32(0x1fffff));
}

TEST(MilterCodec, ConnectPackets) {
  std::string out;
  milterConnect("[192.0.2.1]", '4', 2525, "192.0.2.1", &out);
  EXPECT_EQ(out, packet('C', "[192.0.2.1]\0"s + "4" + "\x09\xdd"s + "192.0.2.1\0"s));
  out.clear();
  milterConnect("host", 'U', 0, "", &out);
  EXPECT_EQ(out, packet('C', "host\0U"s));
}

TEST(MilterCodec, MacrosHeloMailRcptHeader) {
  std::string out;
  milterMacros(MilterCommand::kConnect, {{"j", "mx.example"}, {"{daemon_name}", "mailgate"}}, &out);
  EXPECT_EQ(out, packet('D', "Cj\0mx.example\0{daemon_name}\0mailgate\0"s));
  out.clear();
  milterMacros(MilterCommand::kMail, {}, &out);
  EXPECT_TRUE(out.empty());
  milterHelo("client.example", &out);
  EXPECT_EQ(out, packet('H', "client.example\0"s));
  out.clear();
  milterMail({"<a@b.example>", "SIZE=10"}, &out);
  EXPECT_EQ(out, packet('M', "<a@b.example>\0SIZE=10\0"s));
  out.clear();
  milterRcpt({"<c@d.example>"}, &out);
  EXPECT_EQ(out, packet('R', "<c@d.example>\0"s));
  out.clear();
  milterHeader("Subject", "hi\0there"s, &out);  // an embedded NUL would end the value: cut there
  EXPECT_EQ(out, packet('L', "Subject\0hi\0"s));
  out.clear();
  milterEoh(&out);
  milterEob(&out);
  milterAbort(&out);
  milterQuit(&out);
  EXPECT_EQ(out, packet('N', "") + packet('E', "") + packet('A', "") + packet('Q', ""));
}

TEST(MilterCodec, BodyIsCutIntoChunksOfAtMost65535) {
  std::string out;
  milterBody(std::string(65535 * 2 + 10, 'x'), &out);
  EXPECT_EQ(out, packet('B', std::string(65535, 'x')) + packet('B', std::string(65535, 'x')) +
                     packet('B', std::string(10, 'x')));
  out.clear();
  milterBody("", &out);
  EXPECT_TRUE(out.empty());
}

TEST(MilterCodec, SimpleReplies) {
  const std::string in = packet('c', "") + packet('a', "") + packet('r', "") + packet('t', "") +
                         packet('d', "") + packet('s', "") + packet('p', "");
  const auto r = parseEveryWay(in);
  ASSERT_EQ(r.size(), 7u);
  EXPECT_EQ(r[0], "c|0|0||||0,0,0");
  EXPECT_EQ(r[1], "a|1|0||||0,0,0");
  EXPECT_EQ(r[2], "r|2|0||||0,0,0");
  EXPECT_EQ(r[3], "t|3|0||||0,0,0");
  EXPECT_EQ(r[4], "d|4|0||||0,0,0");
  EXPECT_EQ(r[5], "s|6|0||||0,0,0");
  EXPECT_EQ(r[6], "p|7|0||||0,0,0");
}

TEST(MilterCodec, RepliesWithData) {
  const std::string in = packet('y', "550 5.7.1 No thanks\0"s) + packet('h', "X-Spam\0yes\0"s) +
                         packet('m', be32(2) + "Subject\0\0"s) + packet('i', be32(0) + "X-First\0v\0"s) +
                         packet('b', "new body\r\n") + packet('q', "looks odd\0"s) +
                         packet('O', be32(6) + be32(0x21) + be32(0x80)) +
                         packet('l', be32(1) + "{a} {b}\0"s) + packet('e', "<x@y>\0"s);
  const auto r = parseEveryWay(in);
  ASSERT_EQ(r.size(), 9u);
  EXPECT_EQ(r[0], "y|5|0|||550 5.7.1 No thanks|0,0,0");
  EXPECT_EQ(r[1], "h|8|0|X-Spam|yes||0,0,0");
  EXPECT_EQ(r[2], "m|9|2|Subject|||0,0,0");
  EXPECT_EQ(r[3], "i|10|0|X-First|v||0,0,0");
  EXPECT_EQ(r[4], "b|11|0||new body\r\n||0,0,0");
  EXPECT_EQ(r[5], "q|12|0|||looks odd|0,0,0");
  EXPECT_EQ(r[6], "O|13|0||||6,33,128");
  EXPECT_EQ(r[7], "l|14|1|||{a} {b}|0,0,0");
  EXPECT_EQ(r[8], "e|15|0||||0,0,0");
  EXPECT_TRUE(milterFinal(MilterReplyKind::kReplyCode));
  EXPECT_FALSE(milterFinal(MilterReplyKind::kAddHeader));
  EXPECT_FALSE(milterFinal(MilterReplyKind::kProgress));
}

TEST(MilterCodec, MalformedReplies) {
  EXPECT_EQ(parseEveryWay(packet('y', "550 no nul")).back(),
            "ERR:malformed 'y' reply: text not NUL-terminated");
  EXPECT_EQ(parseEveryWay(packet('m', "\0\0"s)).back(), "ERR:malformed 'm' reply: no index");
  EXPECT_EQ(parseEveryWay(packet('h', "X-A\0no-nul"s)).back(), "ERR:malformed 'h' reply: name or value");
  EXPECT_EQ(parseEveryWay(packet('O', be32(6))).back(), "ERR:malformed 'O' reply: shorter than 12 octets");
  EXPECT_EQ(parseEveryWay(be32(0)).back(), "ERR:empty packet");
  // Over the bound: refused as soon as the length is read, before any data.
  const auto r = parseEveryWay(be32(100) + "b" + std::string(99, 'x'), 64);
  EXPECT_EQ(r.back(), "ERR:packet of 100 octets, over the bound");
  // After an error, nothing more is consumed.
  MilterReplyParser p;
  EXPECT_EQ(p.feed(be32(0)).status, MilterStatus::kError);
  EXPECT_EQ(p.feed(packet('c', "")).consumed, 0u);
}

TEST(MilterCodec, MidPacketAndPipelining) {
  MilterReplyParser p;
  const std::string two = packet('h', "A\0b\0"s) + packet('c', "");
  MilterFeed f = p.feed(std::string_view(two).substr(0, 3));
  EXPECT_EQ(f.status, MilterStatus::kNeedMore);
  EXPECT_TRUE(p.midPacket());
  f = p.feed(std::string_view(two).substr(3));
  EXPECT_EQ(f.status, MilterStatus::kReply);
  EXPECT_EQ(p.reply().kind, MilterReplyKind::kAddHeader);
  EXPECT_FALSE(p.midPacket());
  f = p.feed(std::string_view(two).substr(3 + f.consumed));
  EXPECT_EQ(f.status, MilterStatus::kReply);
  EXPECT_EQ(p.reply().kind, MilterReplyKind::kContinue);
}

}  // namespace
}  // namespace mailgate::filters
