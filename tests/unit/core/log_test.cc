#include "gateway/core/log.h"

#include <gtest/gtest.h>

#include <string>

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

}  // namespace
}  // namespace mailgate::log
