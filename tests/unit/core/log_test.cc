#include "gateway/core/log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

namespace mailgate::log {
namespace {

TEST(JsonEscape, AsciiAndJsonSpecials) {
  EXPECT_EQ(jsonEscape("a \"b\" \\ c"), "a \\\"b\\\" \\\\ c");
  EXPECT_EQ(jsonEscape("x\r\n\ty"), "x\\r\\n\\ty");
  EXPECT_EQ(jsonEscape(std::string("a\0b\x1b\x7f", 5)), "a\\u0000b\\u001b\\u007f");
}

TEST(JsonEscape, WellFormedUtf8PassesAsItIs) {
  EXPECT_EQ(jsonEscape("<j\xc3\xb6rg@example.net>"), "<j\xc3\xb6rg@example.net>");
  EXPECT_EQ(jsonEscape("\xe6\x97\xa5\xe6\x9c\xac"), "\xe6\x97\xa5\xe6\x9c\xac");  // 日本
  EXPECT_EQ(jsonEscape("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");                  // U+1F600
}

TEST(JsonEscape, OctetsThatAreNotUtf8AreEscaped) {
  EXPECT_EQ(jsonEscape("\xff"), "\\u00ff");
  EXPECT_EQ(jsonEscape("\x80x"), "\\u0080x");                   // lone continuation
  EXPECT_EQ(jsonEscape("\xc0\xaf"), "\\u00c0\\u00af");          // overlong '/'
  EXPECT_EQ(jsonEscape("\xed\xa0\x80"), "\\u00ed\\u00a0\\u0080");  // surrogate
  EXPECT_EQ(jsonEscape("\xf4\x90\x80\x80"), "\\u00f4\\u0090\\u0080\\u0080");  // above U+10FFFF
  EXPECT_EQ(jsonEscape("\xe6\x97"), "\\u00e6\\u0097");          // cut short
  EXPECT_EQ(jsonEscape("\xc3" "A"), "\\u00c3A");
}

TEST(JsonEscape, Truncates) {
  EXPECT_EQ(jsonEscape("abcdef", 3), "abc...");
  EXPECT_EQ(jsonEscape("a\xc3\xb6", 2), "a\\u00c3...");  // a sequence cut by the bound is escaped
}

// The sink's reader stalls (a pipe nobody reads): log calls must still return at once,
// drop what does not fit and count it; once the reader reads, the queued lines and
// the drop notice arrive.
TEST(AsyncSink, StalledReaderNeverBlocksLogCalls) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ::fcntl(p[1], F_SETPIPE_SZ, 4096);  // small: full after a few lines
  const uint64_t dropped_before = droppedLines();
  startAsync(p[1], 64 * 1024);
  constexpr int kLines = 100000;
  std::promise<void> done;
  auto finished = done.get_future();
  std::thread burst([&] {
    for (int i = 0; i < kLines; i++) emit(Level::kInfo, "burst", {{"n", i}});
    done.set_value();
  });
  // Not a timing test: 100k calls could not finish at all if one of them waited for
  // the reader, since nobody reads the pipe until they have.
  if (finished.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    burst.detach();
    FAIL() << "log calls block while the log pipe is full";
  }
  burst.join();
  const uint64_t dropped = droppedLines() - dropped_before;
  EXPECT_GT(dropped, 0u);
  EXPECT_LT(dropped, static_cast<uint64_t>(kLines));

  std::string got;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(p[0], buf, sizeof buf);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
  });
  stopAsync();  // writes out what is queued (the reader makes room), then stops
  ::close(p[1]);
  reader.join();
  ::close(p[0]);

  uint64_t lines = 0, noticed = 0, notices = 0;
  size_t pos = 0;
  while (pos < got.size()) {
    size_t end = got.find('\n', pos);
    ASSERT_NE(end, std::string::npos) << "a cut line";
    std::string_view line(got.data() + pos, end - pos);
    if (line.find("\"msg\":\"burst\"") != std::string_view::npos) {
      lines++;
    } else if (line.find("\"msg\":\"log lines dropped\"") != std::string_view::npos) {
      notices++;
      size_t at = line.find("\"lines\":");
      ASSERT_NE(at, std::string_view::npos);
      noticed += std::stoull(std::string(line.substr(at + 8)));
    }
    pos = end + 1;
  }
  EXPECT_GE(notices, 1u);
  EXPECT_EQ(noticed, dropped);
  EXPECT_EQ(lines + dropped, static_cast<uint64_t>(kLines));
}

TEST(AsyncSink, StopWritesEverythingQueued) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  startAsync(p[1], 1 << 20);
  for (int i = 0; i < 100; i++) emit(Level::kWarn, "queued", {{"n", i}});
  stopAsync();
  ::close(p[1]);
  std::string got;
  char buf[65536];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  size_t count = 0;
  for (size_t at = 0; (at = got.find("\"msg\":\"queued\"", at)) != std::string::npos; at++) count++;
  EXPECT_EQ(count, 100u);
  EXPECT_NE(got.find("\"n\":99}"), std::string::npos);
  stopAsync();  // a second stop is harmless
}

}  // namespace
}  // namespace mailgate::log
