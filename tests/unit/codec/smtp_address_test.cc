#include "gateway/codec/smtp_address.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::codec {
namespace {

SmtpAddressError path(const std::string& p, SmtpAddress* a = nullptr, bool utf8 = false, bool null_ok = true,
                      bool postmaster = false) {
  SmtpAddress tmp;
  SmtpAddressOptions o;
  o.allow_null = null_ok;
  o.smtputf8 = utf8;
  o.allow_postmaster = postmaster;
  return parseSmtpPath(p, o, a != nullptr ? a : &tmp);
}

TEST(SmtpAddress, Valid) {
  for (const char* p : {"<a@b>", "<a.b.c@d-e.f>", "<x+tag@example.org>", "<\"john doe\"@example.org>",
                        "<\"\"@example.org>", "<\"a\\\"b\"@x.y>", "<!#$%&'*+-/=?^_`{|}~@x.y>", "<u@[192.0.2.255]>",
                        "<u@[IPv6:2001:db8:0:0:0:0:0:1]>", "<u@[IPv6:2001:db8::1]>", "<u@[ipv6:::]>",
                        "<u@[IPv6:::ffff:192.0.2.1]>", "<u@[IPv6:1:2:3:4:5:6:192.0.2.1]>", "<u@1.2.3.4.example>"}) {
    EXPECT_EQ(path(p), SmtpAddressError::kNone) << p;
  }
}

TEST(SmtpAddress, Invalid) {
  for (const char* p : {"a@b", "<a@b", "a@b>", "<a>", "<@>", "<a@>", "<@b>", "<.a@b>", "<a.@b>", "<a..b@c>",
                        "<a b@c>", "<a@b..c>", "<a@.b>", "<a@b.>", "<a@-b>", "<a@b->", "<a@b_c>", "<a@[1.2.3]>",
                        "<a@[256.1.1.1]>", "<a@[1.2.3.4.5]>", "<a@[IPv6:1:2:3:4:5:6:7]>", "<a@[IPv6:1::2::3]>",
                        "<a@[IPv6:1:2:3:4:5:6:7::]>", "<a@[IPv6:1:2:3:4:5::1.2.3.4]>", "<a@[IPv6:12345::]>",
                        "<a@[tag:stuff]>", "<a@[1.2.3.4]x>", "<\"abc@d>", "<\"a\"b@c>", "< a@b>", "<a@b >"}) {
    EXPECT_EQ(path(p), SmtpAddressError::kSyntax) << p;
  }
}

TEST(SmtpAddress, NullAndPostmaster) {
  SmtpAddress a;
  EXPECT_EQ(path("<>", &a), SmtpAddressError::kNone);
  EXPECT_TRUE(a.is_null);
  EXPECT_EQ(a.domainLower(), "");
  EXPECT_EQ(path("<>", &a, false, false), SmtpAddressError::kNullNotAllowed);
  EXPECT_EQ(path("<postMaster>", &a, false, false, true), SmtpAddressError::kNone);
  EXPECT_TRUE(a.is_postmaster);
  EXPECT_EQ(path("<postmaster>", &a, false, false, false), SmtpAddressError::kSyntax);
}

TEST(SmtpAddress, SourceRouteRejected) {
  SmtpAddress a;
  EXPECT_EQ(path("<@relay.example:user@example.org>", &a), SmtpAddressError::kSourceRoute);
  EXPECT_EQ(path("<@a,@b:user@d>", &a), SmtpAddressError::kSourceRoute);
  EXPECT_TRUE(a.local_part.empty());  // cleared on error
}

TEST(SmtpAddress, Lengths) {
  const std::string l64(64, 'l');
  EXPECT_EQ(path("<" + l64 + "@x.y>"), SmtpAddressError::kNone);
  EXPECT_EQ(path("<" + l64 + "l@x.y>"), SmtpAddressError::kLocalTooLong);
  const std::string lab63(63, 'd');
  EXPECT_EQ(path("<a@" + lab63 + ".org>"), SmtpAddressError::kNone);
  EXPECT_EQ(path("<a@" + lab63 + "d.org>"), SmtpAddressError::kDomainTooLong);
  // 255-octet domain: 4 labels of 63 + 3 dots = 255.
  const std::string d255 = lab63 + "." + lab63 + "." + lab63 + "." + lab63;
  ASSERT_EQ(d255.size(), 255u);
  SmtpAddress a;
  SmtpAddressOptions o;
  EXPECT_EQ(parseSmtpMailbox("a@" + d255, o, &a), SmtpAddressError::kNone);
  EXPECT_EQ(parseSmtpMailbox("a@" + d255 + "x", o, &a), SmtpAddressError::kDomainTooLong);
  EXPECT_EQ(path("<a@" + d255 + ">"), SmtpAddressError::kPathTooLong);  // 259 octets
}

TEST(SmtpAddress, PathLimit) {
  // 2 + 64 + 1 + 189 = 256: accepted; one more: kPathTooLong.
  const std::string l64(64, 'l');
  const std::string dom = std::string(63, 'd') + "." + std::string(63, 'd') + "." + std::string(61, 'd');
  ASSERT_EQ(dom.size(), 189u);
  EXPECT_EQ(path("<" + l64 + "@" + dom + ">"), SmtpAddressError::kNone);
  EXPECT_EQ(path("<" + l64 + "@" + dom + "d>"), SmtpAddressError::kPathTooLong);
}

TEST(SmtpAddress, EightBit) {
  const std::string u = "<j\xc3\xbcrgen@m\xc3\xbcller.example>";
  EXPECT_EQ(path(u), SmtpAddressError::kEightBit);
  SmtpAddress a;
  EXPECT_EQ(path(u, &a, true), SmtpAddressError::kNone);
  EXPECT_TRUE(a.eight_bit);
  EXPECT_EQ(a.domainLower(), "m\xc3\xbcller.example");
  EXPECT_EQ(path("<\"\xc3\xa9t\xc3\xa9\"@x.y>", &a, true), SmtpAddressError::kNone);
  EXPECT_TRUE(a.quoted_local);
  // Malformed UTF-8 (lone continuation, overlong, surrogate, truncated) is a syntax error.
  for (const char* bad : {"<a\x80@x.y>", "<a\xc0\xaf@x.y>", "<a\xed\xa0\x80@x.y>", "<a\xc3@x.y>"}) {
    EXPECT_EQ(path(bad, nullptr, true), SmtpAddressError::kSyntax) << bad;
  }
}

TEST(SmtpAddress, FlagsAndAccessors) {
  SmtpAddress a;
  const std::string p1 = "<user%other.example@Relay.Example.COM>";  // views point into it
  ASSERT_EQ(path(p1, &a), SmtpAddressError::kNone);
  EXPECT_TRUE(a.percent_hack);
  EXPECT_FALSE(a.bang_path);
  EXPECT_EQ(a.local_part, "user%other.example");
  EXPECT_EQ(a.domain, "Relay.Example.COM");
  EXPECT_EQ(a.domainLower(), "relay.example.com");
  ASSERT_EQ(path("<other!user@relay.example>", &a), SmtpAddressError::kNone);
  EXPECT_TRUE(a.bang_path);
  EXPECT_FALSE(a.percent_hack);
  ASSERT_EQ(path("<\"a%b\"@relay.example>", &a), SmtpAddressError::kNone);
  EXPECT_TRUE(a.percent_hack);
  const SmtpAddress copy = a;  // the lower-case domain survives a copy
  EXPECT_EQ(copy.domainLower(), "relay.example");
}

TEST(SmtpAddress, Unquote) {
  char buf[64];
  EXPECT_EQ(unquoteLocalPart("\"a\\\"b c\"", buf, sizeof buf), 5u);
  EXPECT_EQ(std::string(buf, 5), "a\"b c");
  EXPECT_EQ(unquoteLocalPart("plain.x", buf, sizeof buf), 7u);
  EXPECT_EQ(unquoteLocalPart("plain.x", buf, 3), SIZE_MAX);
}

TEST(SmtpAddress, HeloDomain) {
  EXPECT_EQ(checkSmtpDomain("mx1.example.org", false), SmtpAddressError::kNone);
  EXPECT_EQ(checkSmtpDomain("[10.0.0.1]", false), SmtpAddressError::kNone);
  EXPECT_EQ(checkSmtpDomain("DESKTOP-1A2B", false), SmtpAddressError::kNone);
  EXPECT_EQ(checkSmtpDomain("bad host", false), SmtpAddressError::kSyntax);
  EXPECT_EQ(checkSmtpDomain("", false), SmtpAddressError::kSyntax);
}

}  // namespace
}  // namespace mailgate::codec
