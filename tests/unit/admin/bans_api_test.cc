#include "gateway/admin/bans_api.h"

#include <gtest/gtest.h>

namespace mailgate::admin {
namespace {

using filters::policy::Ban;

TEST(RequestLine, MethodPathAndDecodedQuery) {
  HttpRequest r;
  ASSERT_TRUE(
      parseRequestLine("POST /bans?net=2001%3Adb8%3A%3A%2F32&ttl=1h&reason=brute+force%21 HTTP/1.0", &r));
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/bans");
  ASSERT_NE(r.param("net"), nullptr);
  EXPECT_EQ(*r.param("net"), "2001:db8::/32");
  EXPECT_EQ(*r.param("ttl"), "1h");
  EXPECT_EQ(*r.param("reason"), "brute force!");
  EXPECT_EQ(r.param("nope"), nullptr);
}

TEST(RequestLine, NoQueryAndEmptyPairs) {
  HttpRequest r;
  ASSERT_TRUE(parseRequestLine("GET /bans HTTP/1.1", &r));
  EXPECT_TRUE(r.query.empty());
  ASSERT_TRUE(parseRequestLine("GET /bans?&&format=table& HTTP/1.1", &r));
  ASSERT_EQ(r.query.size(), 1u);
  EXPECT_EQ(*r.param("format"), "table");
}

TEST(RequestLine, RefusesMalformed) {
  HttpRequest r;
  EXPECT_FALSE(parseRequestLine("", &r));
  EXPECT_FALSE(parseRequestLine("GET", &r));
  EXPECT_FALSE(parseRequestLine("GET bans HTTP/1.0", &r));
  EXPECT_FALSE(parseRequestLine("GET /bans?net=%4 HTTP/1.0", &r));
  EXPECT_FALSE(parseRequestLine("GET /bans?net=%zz HTTP/1.0", &r));
  EXPECT_FALSE(parseRequestLine("GET /bans?net=%00 HTTP/1.0", &r));
}

TEST(PercentCodec, EncodeThenDecodeIsIdentity) {
  const std::string text = "a b/c:d?e&f=g%h+i\xc3\xa9";
  std::string back;
  ASSERT_TRUE(percentDecode(percentEncode(text), &back));
  EXPECT_EQ(back, text);
  EXPECT_EQ(percentEncode("1.2.3.4/32"), "1.2.3.4%2F32");
}

TEST(BanRequest, DefaultsAndBounds) {
  HttpRequest r;
  BanRequest br;
  std::string err;
  ASSERT_TRUE(parseRequestLine("POST /bans?net=192.0.2.9 HTTP/1.0", &r));
  ASSERT_TRUE(parseBanRequest(r, &br, &err)) << err;
  EXPECT_EQ(br.net.prefix, 32);
  EXPECT_EQ(br.ttl, std::chrono::hours(1));
  EXPECT_EQ(br.reason, "admin");

  ASSERT_TRUE(parseRequestLine("POST /bans?net=10.1.2.3/8&ttl=90s&reason=x HTTP/1.0", &r));
  br = BanRequest{};
  ASSERT_TRUE(parseBanRequest(r, &br, &err)) << err;
  EXPECT_EQ(br.net.text(), "10.0.0.0/8");  // host bits cleared
  EXPECT_EQ(br.ttl, std::chrono::seconds(90));
  EXPECT_EQ(br.reason, "x");

  for (const char* bad :
       {"POST /bans HTTP/1.0", "POST /bans?net= HTTP/1.0", "POST /bans?net=example.org HTTP/1.0",
        "POST /bans?net=1.2.3.4&ttl=0s HTTP/1.0", "POST /bans?net=1.2.3.4&ttl=400d HTTP/1.0",
        "POST /bans?net=1.2.3.4&ttl=soon HTTP/1.0", "POST /bans?net=1.2.3.4&reason=a%0Ab HTTP/1.0"}) {
    ASSERT_TRUE(parseRequestLine(bad, &r)) << bad;
    br = BanRequest{};
    err.clear();
    EXPECT_FALSE(parseBanRequest(r, &br, &err)) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
  ASSERT_TRUE(parseRequestLine(
      "POST /bans?net=1.2.3.4&reason=" + std::string(kMaxReason + 1, 'r') + " HTTP/1.0", &r));
  EXPECT_FALSE(parseBanRequest(r, &br, &err));
}

TEST(BanList, JsonAndTable) {
  Ban b;
  ASSERT_TRUE(filters::policy::parseCidr("192.0.2.0/24", &b.net));
  b.created_ms = 1700000000000;
  b.expires_ms = 1700003600000;
  b.level = 2;
  b.reason = "say \"hi\"\x01";
  b.origin = "mx1";
  const std::string json = bansJson({b});
  EXPECT_EQ(
      json,
      "[{\"net\":\"192.0.2.0/24\",\"created\":\"2023-11-14T22:13:20Z\",\"expires\":\"2023-11-14T23:13:20Z\","
      "\"expires_ms\":1700003600000,\"level\":2,\"reason\":\"say \\\"hi\\\"\\u0001\",\"origin\":\"mx1\"}]\n");
  EXPECT_EQ(bansJson({}), "[]\n");
  const std::string table = bansTable({b});
  EXPECT_NE(table.find("NET"), std::string::npos);
  EXPECT_NE(table.find("192.0.2.0/24  2023-11-14T23:13:20Z  2      mx1     say \"hi\"?"), std::string::npos)
      << table;
}

}  // namespace
}  // namespace mailgate::admin
