// Durations, sizes and listen addresses: the scalar syntaxes of the configuration.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

Duration ms(int64_t v) { return Duration(v); }

TEST(ParseDuration, Units) {
  Duration d{};
  ASSERT_TRUE(parseDuration("250ms", &d));
  EXPECT_EQ(d, ms(250));
  ASSERT_TRUE(parseDuration("30s", &d));
  EXPECT_EQ(d, ms(30000));
  ASSERT_TRUE(parseDuration("5m", &d));
  EXPECT_EQ(d, ms(300000));
  ASSERT_TRUE(parseDuration("1h", &d));
  EXPECT_EQ(d, ms(3600000));
  ASSERT_TRUE(parseDuration("2d", &d));
  EXPECT_EQ(d, ms(172800000));
  ASSERT_TRUE(parseDuration("0", &d));
  EXPECT_EQ(d, ms(0));
  ASSERT_TRUE(parseDuration("0ms", &d));
  EXPECT_EQ(d, ms(0));
}

TEST(ParseDuration, BareNumberIsSeconds) {
  Duration d{};
  ASSERT_TRUE(parseDuration("45", &d));
  EXPECT_EQ(d, ms(45000));
}

TEST(ParseDuration, Rejects) {
  for (const char* bad : {"", "10x", "-1", "+1", "1.5s", "s", "ms", " 5s", "5s ", "5 s", "5S", "5sec",
                          "1h30m", "0x10", "5ms5", "\xff"}) {
    Duration d = ms(7);
    EXPECT_FALSE(parseDuration(bad, &d)) << bad;
    EXPECT_EQ(d, ms(7)) << "output untouched on failure: " << bad;
  }
}

TEST(ParseDuration, Overflow) {
  Duration d{};
  // Largest representable: INT64_MAX milliseconds.
  ASSERT_TRUE(parseDuration("9223372036854775807ms", &d));
  EXPECT_EQ(d.count(), INT64_MAX);
  EXPECT_FALSE(parseDuration("9223372036854775808ms", &d));   // > INT64_MAX
  EXPECT_FALSE(parseDuration("18446744073709551616ms", &d));  // > UINT64_MAX while reading digits
  EXPECT_FALSE(parseDuration("9223372036854776s", &d));       // fits as seconds, not as milliseconds
  EXPECT_FALSE(parseDuration("106751991167301d", &d));
  EXPECT_FALSE(parseDuration("99999999999999999999999999", &d));
  ASSERT_TRUE(parseDuration("106751991167d", &d));
  EXPECT_EQ(d.count(), 106751991167LL * 86400000LL);
}

TEST(ParseSize, Units) {
  uint64_t v = 0;
  ASSERT_TRUE(parseSize("512", &v));
  EXPECT_EQ(v, 512u);
  ASSERT_TRUE(parseSize("64K", &v));
  EXPECT_EQ(v, 64u * 1024);
  ASSERT_TRUE(parseSize("64k", &v));
  EXPECT_EQ(v, 64u * 1024);
  ASSERT_TRUE(parseSize("50M", &v));
  EXPECT_EQ(v, 50u * 1024 * 1024);
  ASSERT_TRUE(parseSize("1G", &v));
  EXPECT_EQ(v, 1024u * 1024 * 1024);
  ASSERT_TRUE(parseSize("0", &v));
  EXPECT_EQ(v, 0u);
}

TEST(ParseSize, Rejects) {
  for (const char* bad : {"", "10x", "-1", "+1", "1.5K", "K", "64KB", "64 K", "1T", "0x10", " 1", "1 "}) {
    uint64_t v = 7;
    EXPECT_FALSE(parseSize(bad, &v)) << bad;
    EXPECT_EQ(v, 7u) << bad;
  }
}

TEST(ParseSize, Overflow) {
  uint64_t v = 0;
  ASSERT_TRUE(parseSize("18446744073709551615", &v));
  EXPECT_EQ(v, UINT64_MAX);
  EXPECT_FALSE(parseSize("18446744073709551616", &v));
  ASSERT_TRUE(parseSize("17179869183G", &v));  // (2^64 - 1) / 2^30, rounded down
  EXPECT_FALSE(parseSize("17179869184G", &v));
  EXPECT_FALSE(parseSize("18014398509481984K", &v));
}

TEST(ParseListenAddress, Accepts) {
  ListenAddress a;
  std::string why;
  ASSERT_TRUE(parseListenAddress("0.0.0.0:25", &a, &why)) << why;
  EXPECT_EQ(a.host, "0.0.0.0");
  EXPECT_EQ(a.port, 25);
  ASSERT_TRUE(parseListenAddress("*:993", &a, &why)) << why;
  EXPECT_TRUE(a.any());
  EXPECT_EQ(a.port, 993);
  ASSERT_TRUE(parseListenAddress("[::1]:143", &a, &why)) << why;
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, 143);
  ASSERT_TRUE(parseListenAddress("[::]:65535", &a, &why)) << why;
  EXPECT_EQ(a.port, 65535);
  ASSERT_TRUE(parseListenAddress("127.0.0.1:1", &a, &why)) << why;
  EXPECT_EQ(a.host, "127.0.0.1");
}

TEST(ParseListenAddress, Rejects) {
  for (const char* bad : {"",
                          "25",
                          ":25",
                          "127.0.0.1",
                          "127.0.0.1:",
                          "127.0.0.1:0",
                          "127.0.0.1:65536",
                          "127.0.0.1:abc",
                          "127.0.0.1:-1",
                          "127.0.0.1:+25",
                          "999.0.0.1:25",
                          "1.2.3:25",
                          "::1:143",
                          "[::1]143",
                          "localhost:143",
                          "mx.example.org:25",
                          "[::1]",
                          "[::1:143",
                          "[]:143",
                          "[1.2.3.4]:143",
                          "[zz::1]:143",
                          "-host:25",
                          "host-:25",
                          "ho_st:25",
                          "a..b:25",
                          "*:99999999999999999999",
                          "[::1]:"}) {
    ListenAddress a;
    std::string why;
    EXPECT_FALSE(parseListenAddress(bad, &a, &why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
  ListenAddress a;
  EXPECT_FALSE(parseListenAddress("x", &a, nullptr));  // error text is optional
}

TEST(ConfigError, Format) {
  EXPECT_EQ((ConfigError{"/etc/mailgate.yaml", 3, 7, "boom"}).format(), "/etc/mailgate.yaml:3:7: boom");
  EXPECT_EQ((ConfigError{"/etc/mailgate.yaml", 0, 0, "cannot read"}).format(),
            "/etc/mailgate.yaml: cannot read");
}

}  // namespace
}  // namespace mailgate::conf
