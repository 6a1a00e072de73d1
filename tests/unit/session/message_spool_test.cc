// MessageSpool: memory up to the bound, then an anonymous file; the content reads
// back identical whatever the write pattern.
#include "gateway/session/message_spool.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::session {
namespace {

std::string pattern(size_t n) {
  std::string s;
  s.reserve(n);
  for (size_t i = 0; i < n; ++i) s += static_cast<char>('a' + (i * 7 + i / 13) % 26);
  return s;
}

std::string readAll(MessageSpool& sp, size_t chunk) {
  std::string out, piece;
  for (uint64_t off = 0; off < sp.size(); off += chunk) {
    EXPECT_TRUE(sp.read(off, chunk, &piece));
    out += piece;
  }
  return out;
}

TEST(MessageSpool, SmallMessageStaysInMemory) {
  MessageSpool sp(1024, "/tmp");
  sp.write("Subject: x\r\n\r\nhi\r\n");
  ASSERT_TRUE(sp.flush());
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(sp.memory(), "Subject: x\r\n\r\nhi\r\n");
  EXPECT_EQ(sp.tail(), "\r\n");
  EXPECT_EQ(sp.size(), 18u);
}

TEST(MessageSpool, LargeMessageGoesToFileAndReadsBack) {
  for (size_t step : {1u, 7u, 4096u, 65536u, 300000u}) {
    MessageSpool sp(10000, "/tmp");
    const std::string data = pattern(1'000'003);
    for (size_t i = 0; i < data.size(); i += step) sp.write(std::string_view(data).substr(i, step));
    ASSERT_TRUE(sp.flush()) << sp.error();
    EXPECT_TRUE(sp.inFile());
    EXPECT_EQ(sp.size(), data.size());
    EXPECT_EQ(sp.tail(), data.substr(data.size() - 2));
    EXPECT_EQ(readAll(sp, 65536), data) << "step " << step;
    EXPECT_EQ(readAll(sp, 999), data) << "step " << step;
  }
}

TEST(MessageSpool, ZeroMemoryAlwaysUsesAFile) {
  MessageSpool sp(0, "/tmp");
  sp.write("x");
  ASSERT_TRUE(sp.flush());
  EXPECT_TRUE(sp.inFile());
  EXPECT_EQ(readAll(sp, 10), "x");
  EXPECT_EQ(sp.tail(), "x");
}

TEST(MessageSpool, ClearReleasesAndRestarts) {
  MessageSpool sp(16, "/tmp");
  sp.write(pattern(100));
  ASSERT_TRUE(sp.flush());
  EXPECT_TRUE(sp.inFile());
  sp.clear();
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(sp.size(), 0u);
  EXPECT_EQ(sp.tail(), "");
  sp.write("ab");
  ASSERT_TRUE(sp.flush());
  EXPECT_FALSE(sp.inFile());
  EXPECT_EQ(sp.memory(), "ab");
}

TEST(MessageSpool, UnusableDirectoryFailsCleanly) {
  MessageSpool sp(4, "/nonexistent-spool-dir");
  sp.write("0123456789");
  EXPECT_TRUE(sp.failed());
  EXPECT_FALSE(sp.flush());
  EXPECT_NE(sp.error().find("/nonexistent-spool-dir"), std::string::npos) << sp.error();
  EXPECT_EQ(sp.size(), 10u);  // counted, not kept
}

TEST(MessageSpool, TailTracksSingleOctetWrites) {
  MessageSpool sp(1024, "/tmp");
  sp.write("a");
  EXPECT_EQ(sp.tail(), "a");
  sp.write("\r");
  EXPECT_EQ(sp.tail(), "a\r");
  sp.write("\n");
  EXPECT_EQ(sp.tail(), "\r\n");
}

}  // namespace
}  // namespace mailgate::session
