#include "auth/sasl.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::auth {
namespace {

using namespace std::string_literals;

TEST(Plain, EncodeIsWhatDecodeReads) {
  EXPECT_EQ(encodePlain("", "alice@example.org", "pw"), base64Encode(std::string("\0alice@example.org\0pw", 21)));
  auto decoded = base64Decode(encodePlain("u", "u", "secret"));
  ASSERT_TRUE(decoded);
  auto creds = decodePlain(decoded.value());
  ASSERT_TRUE(creds);
  EXPECT_EQ(creds.value().authcid, "u");
  EXPECT_EQ(creds.value().password, "secret");
}

TEST(Base64, Rfc4648Vectors) {
  const std::pair<std::string, std::string> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, enc] : vectors) {
    EXPECT_EQ(base64Encode(plain), enc);
    auto d = base64Decode(enc);
    ASSERT_TRUE(d) << enc << ": " << d.error();
    EXPECT_EQ(*d, plain);
  }
}

TEST(Base64, AllByteValuesRoundTrip) {
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (std::size_t n = 0; n <= all.size(); n += 7) {
    auto d = base64Decode(base64Encode(all.substr(0, n)));
    ASSERT_TRUE(d);
    EXPECT_EQ(*d, all.substr(0, n));
  }
}

TEST(Base64, StrictRejects) {
  for (const char* bad : {"Zg", "Zg=", "Zm9", "Z===", "====", "Zg==Zg==", "Zm9v\r\n", "Zm 9v",
                          "Zm9v=", "Zh==", "Zm9=", "Zm-v", "Zm_v", "Zg=a", "=Zm9"}) {
    EXPECT_FALSE(base64Decode(bad)) << bad;
  }
}

TEST(SaslPlain, DecodesWithAndWithoutAuthzid) {
  auto a = decodePlain("\0alice@example.org\0pw"s);
  ASSERT_TRUE(a) << a.error();
  EXPECT_EQ(a->authzid, "");
  EXPECT_EQ(a->authcid, "alice@example.org");
  EXPECT_EQ(a->password, "pw");
  auto b = decodePlain("alice\0alice\0p w:x"s);
  ASSERT_TRUE(b) << b.error();
  EXPECT_EQ(b->authzid, "alice");
  EXPECT_EQ(b->password, "p w:x");
}

TEST(SaslPlain, FromBase64LikeAClient) {
  // printf '\0tim\0tanstaaftanstaaf' | base64  (RFC 4616 example)
  auto raw = base64Decode("AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
  ASSERT_TRUE(raw);
  auto c = decodePlain(*raw);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->authcid, "tim");
  EXPECT_EQ(c->password, "tanstaaftanstaaf");
}

TEST(SaslPlain, Rejects) {
  EXPECT_FALSE(decodePlain(""));
  EXPECT_FALSE(decodePlain("alice"));
  EXPECT_FALSE(decodePlain("\0alice"s));        // one NUL
  EXPECT_FALSE(decodePlain("\0alice\0pw\0"s));  // three NULs
  EXPECT_FALSE(decodePlain("\0\0pw"s));         // empty authcid
  EXPECT_FALSE(decodePlain("\0alice\0"s));      // empty password
  EXPECT_FALSE(decodePlain("\0ali\rce\0pw"s));  // CR in user
  EXPECT_FALSE(decodePlain("\0alice\0p\nw"s));  // LF in password
  EXPECT_FALSE(decodePlain("\0" + std::string(kMaxCredentialLength + 1, 'a') + "\0pw"s));
  auto z = decodePlain("admin\0alice\0pw"s);
  ASSERT_FALSE(z);
  EXPECT_EQ(z.error(), "authorization identity not supported");
}

TEST(SaslPlain, LongestAcceptedFields) {
  std::string user(kMaxCredentialLength, 'u'), pw(kMaxCredentialLength, 'p');
  auto c = decodePlain("\0"s + user + "\0"s + pw);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->authcid.size(), kMaxCredentialLength);
}

TEST(SaslLogin, PromptsAndResponses) {
  EXPECT_EQ(*base64Decode(kLoginUsernamePrompt), "Username:");
  EXPECT_EQ(*base64Decode(kLoginPasswordPrompt), "Password:");
  auto u = decodeLoginResponse(base64Encode("bob@example.org"));
  ASSERT_TRUE(u);
  EXPECT_EQ(*u, "bob@example.org");
  EXPECT_FALSE(decodeLoginResponse(""));
  EXPECT_FALSE(decodeLoginResponse("*"));
  EXPECT_FALSE(decodeLoginResponse(base64Encode("bo\0b"s)));
  EXPECT_FALSE(decodeLoginResponse(base64Encode("bob\r\nA1 LOGOUT")));
  EXPECT_FALSE(decodeLoginResponse("Ym9i\r\n"));
}

}  // namespace
}  // namespace mailgate::auth
