#include "gateway/core/ascii.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::ascii {
namespace {

// Every byte value, compared with the plain ASCII definitions (no locale, no 8-bit folding).
TEST(Ascii, ClassesAndFoldingCoverEveryByte) {
  for (int i = 0; i < 256; ++i) {
    const char c = static_cast<char>(i);
    const bool up = i >= 'A' && i <= 'Z';
    const bool low = i >= 'a' && i <= 'z';
    const bool digit = i >= '0' && i <= '9';
    EXPECT_EQ(isAlpha(c), up || low) << i;
    EXPECT_EQ(isDigit(c), digit) << i;
    EXPECT_EQ(isHexDigit(c), digit || (i >= 'A' && i <= 'F') || (i >= 'a' && i <= 'f')) << i;
    EXPECT_EQ(toLower(c), up ? static_cast<char>(i + 32) : c) << i;
    EXPECT_EQ(toUpper(c), low ? static_cast<char>(i - 32) : c) << i;
  }
}

TEST(Ascii, StringsFoldOnlyAsciiLetters) {
  EXPECT_EQ(lower("User@Example.ORG"), "user@example.org");
  EXPECT_EQ(upper("sha512-crypt"), "SHA512-CRYPT");
  EXPECT_EQ(lower(std::string("\xC3\x89T\xC3\xA9", 5)), std::string("\xC3\x89t\xC3\xA9", 5));
  EXPECT_EQ(upper(std::string("a\0b", 3)), std::string("A\0B", 3));
  EXPECT_EQ(lower(""), "");
}

TEST(Ascii, CaseInsensitiveCompare) {
  EXPECT_TRUE(iequals("AUTH", "auth"));
  EXPECT_TRUE(iequals("Plain-MD5", "PLAIN-md5"));
  EXPECT_TRUE(iequals("", ""));
  EXPECT_FALSE(iequals("AUTH", "AUTH "));
  EXPECT_FALSE(iequals("[", "{"));        // 0x5B / 0x7B differ only in the case bit
  EXPECT_FALSE(iequals("\xC9", "\xE9"));  // Latin-1 É / é are not folded
  EXPECT_FALSE(iequals(std::string_view("PL\0A", 4), std::string_view("PL\0B", 4)));

  EXPECT_TRUE(istartsWith("* ok ready", "* OK"));
  EXPECT_TRUE(istartsWith("HTTP/1.1 200", "http/"));
  EXPECT_TRUE(istartsWith("x", ""));
  EXPECT_FALSE(istartsWith("+O", "+OK"));
  EXPECT_FALSE(istartsWith("-ERR", "+OK"));
}

static_assert(toLower('Q') == 'q' && toUpper('q') == 'Q' && iequals("Mail", "MAIL"));
static_assert(istartsWith("rcpt TO:<a@b>", "RCPT TO:") && !isHexDigit('g') && isHexDigit('F'));

}  // namespace
}  // namespace mailgate::ascii
