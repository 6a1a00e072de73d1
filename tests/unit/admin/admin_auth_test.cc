#include "gateway/admin/admin_auth.h"

#include <gtest/gtest.h>

namespace mailgate::admin {
namespace {

TEST(AdminAuth, ConstantTimeEquals) {
  EXPECT_TRUE(constantTimeEquals("s3cret-token", "s3cret-token"));
  EXPECT_FALSE(constantTimeEquals("s3cret-token", "s3cret-tokeN"));
  EXPECT_FALSE(constantTimeEquals("s3cret-token", "s3cret-token "));
  EXPECT_FALSE(constantTimeEquals("s3cret-token", ""));
  EXPECT_TRUE(constantTimeEquals("", ""));
}

TEST(AdminAuth, BearerToken) {
  EXPECT_EQ(bearerToken("Bearer abc"), "abc");
  EXPECT_EQ(bearerToken("bearer   abc  "), "abc");
  EXPECT_EQ(bearerToken("BEARER abc"), "abc");
  EXPECT_EQ(bearerToken("Basic YWJjOmRlZg=="), "");
  EXPECT_EQ(bearerToken("Bearer"), "");
  EXPECT_EQ(bearerToken("Bearer "), "");
  EXPECT_EQ(bearerToken(""), "");
}

TEST(AdminAuth, Check) {
  EXPECT_EQ(checkAdminToken("", "Bearer x", ""), AuthResult::kReadOnly);
  EXPECT_EQ(checkAdminToken("", "", ""), AuthResult::kReadOnly);
  EXPECT_EQ(checkAdminToken("tok", "", ""), AuthResult::kMissing);
  EXPECT_EQ(checkAdminToken("tok", "Basic dG9r", ""), AuthResult::kMissing);
  EXPECT_EQ(checkAdminToken("tok", "Bearer tok", ""), AuthResult::kAllowed);
  EXPECT_EQ(checkAdminToken("tok", "Bearer nope", ""), AuthResult::kWrong);
  EXPECT_EQ(checkAdminToken("tok", "", "tok"), AuthResult::kAllowed);
  EXPECT_EQ(checkAdminToken("tok", "", "to"), AuthResult::kWrong);
  // The header wins over the form field.
  EXPECT_EQ(checkAdminToken("tok", "Bearer nope", "tok"), AuthResult::kWrong);
}

TEST(AdminAuth, TokenFileContent) {
  EXPECT_EQ(tokenFromFileContent("abc\n"), "abc");
  EXPECT_EQ(tokenFromFileContent("  abc \r\nsecond line\n"), "abc");
  EXPECT_EQ(tokenFromFileContent("abc"), "abc");
  EXPECT_EQ(tokenFromFileContent("\nabc\n"), "");
  EXPECT_EQ(tokenFromFileContent(""), "");
}

TEST(AdminAuth, HeaderValue) {
  const std::string head =
      "POST /bans HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer t0k \r\nContent-Length: 12\r\n\r\n";
  EXPECT_EQ(headerValue(head, "Authorization"), "Bearer t0k");
  EXPECT_EQ(headerValue(head, "content-length"), "12");
  EXPECT_EQ(headerValue(head, "Host"), "x");
  EXPECT_EQ(headerValue(head, "Content"), "");
  EXPECT_EQ(headerValue(head, "POST /bans HTTP/1.1"), "");
  // LF-only heads, and nothing after the blank line counts.
  EXPECT_EQ(headerValue("GET / HTTP/1.0\nX-A: 1\n\nX-B: 2\n", "X-A"), "1");
  EXPECT_EQ(headerValue("GET / HTTP/1.0\nX-A: 1\n\nX-B: 2\n", "X-B"), "");
}

TEST(AdminAuth, Form) {
  std::vector<std::pair<std::string, std::string>> f;
  ASSERT_TRUE(parseForm("token=a%2Bb+c&return=status&&empty=", &f));
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[0], (std::pair<std::string, std::string>{"token", "a+b c"}));
  EXPECT_EQ(f[1].second, "status");
  EXPECT_EQ(f[2].second, "");
  EXPECT_FALSE(parseForm("token=%zz", &f));
  EXPECT_FALSE(parseForm("token=%00", &f));
}

}  // namespace
}  // namespace mailgate::admin
