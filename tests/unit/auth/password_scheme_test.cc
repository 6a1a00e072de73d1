#include "auth/password_scheme.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::auth {
namespace {

// Produced with `doveadm pw -s SCHEME -p 'correct horse'` (Dovecot 2.3, Debian 12).
constexpr const char* kDoveadmVectors[] = {
    "{SHA512-CRYPT}$6$8gpe.bi9zE/.Edr0$Ruq5V0Gw20PkY/ol/mzd.29Lf.m1d7Yrqqu/"
    "uFpc4F2HQCi8.yi1Q7lFi6nzJtRShKsV77yOAWhnJ/"
    "MDtfHo/0",
    "{SHA256-CRYPT}$5$2Rzc8h8CItXUd7A8$nd3SFf/wQJWj9dw0V.k9FMDIjB55cL.8/kh4bXnR595",
    "{BLF-CRYPT}$2y$05$d0ZEfsiPPHeQs9avIAF4y.3a15YMHBUl1fS7qMqXifFAhn06ExRym",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$FOg5vZzuYf41nTxz7nHivw$idB7Q52ziBAjka+kAIMLPZFbRD/"
    "DG3JrJeii3uQ2t+g",
    "{MD5-CRYPT}$1$RNZ7rK9B$aMDBHTR9w4EEcqRdTc1/81",
    "{MD5}$1$m2HV2R5E$.FelM7HIUmp/hPzJf0ZI9.",
    "{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cde",
    "{PLAIN-MD5.B64}PLTnMmMfR+brlh80VUt83g==",
    "{PLAIN-MD5}PLTnMmMfR+brlh80VUt83g==",
    "{MD5}3cb4e732631f47e6eb961f34554b7cde",  // seed 004: legacy hex in an MD5 column
    "{PLAIN}correct horse",
    "{CLEARTEXT}correct horse",
};

class DoveadmVector : public ::testing::TestWithParam<const char*> {};

TEST_P(DoveadmVector, VerifiesRightPasswordOnly) {
  auto ok = verifyPassword(GetParam(), "correct horse", Scheme::kPlain);
  ASSERT_TRUE(ok) << ok.error();
  EXPECT_TRUE(*ok);
  for (const char* wrong : {"correct horsf", "correct hors", "Correct horse", "", "correct horse "}) {
    auto bad = verifyPassword(GetParam(), wrong, Scheme::kPlain);
    ASSERT_TRUE(bad);
    EXPECT_FALSE(*bad) << "accepted '" << wrong << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(Doveadm, DoveadmVector, ::testing::ValuesIn(kDoveadmVectors));

TEST(PasswordScheme, UppercaseHexPlainMd5) {
  auto r = verifyPassword("{PLAIN-MD5}3CB4E732631F47E6EB961F34554B7CDE", "correct horse", Scheme::kPlain);
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
}

TEST(PasswordScheme, DefaultSchemeAppliesWithoutPrefix) {
  // Bare value: the caller's default scheme decides how it is read.
  auto as_md5 = verifyPassword("3cb4e732631f47e6eb961f34554b7cde", "correct horse", Scheme::kPlainMd5);
  ASSERT_TRUE(as_md5);
  EXPECT_TRUE(*as_md5);
  auto as_plain = verifyPassword("3cb4e732631f47e6eb961f34554b7cde", "correct horse", Scheme::kPlain);
  ASSERT_TRUE(as_plain);
  EXPECT_FALSE(*as_plain);
  auto as_crypt = verifyPassword("$5$2Rzc8h8CItXUd7A8$nd3SFf/wQJWj9dw0V.k9FMDIjB55cL.8/kh4bXnR595",
                                 "correct horse", Scheme::kSha256Crypt);
  ASSERT_TRUE(as_crypt);
  EXPECT_TRUE(*as_crypt);
  // A bare hash that does not fit the default scheme is an error, not a silent mismatch.
  EXPECT_FALSE(verifyPassword("3cb4e732631f47e6eb961f34554b7cde", "x", Scheme::kSha512Crypt));
}

TEST(PasswordScheme, UnknownSchemeIsAnError) {
  auto r = verifyPassword("{FOO}bar", "bar", Scheme::kPlain);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), "unknown scheme {FOO}");
  EXPECT_FALSE(verifyPassword("{SSHA}abcd", "abcd", Scheme::kPlain));
  EXPECT_FALSE(verifyPassword("{PLAIN", "x", Scheme::kPlain));
  EXPECT_FALSE(verifyPassword("{SHA512-CRYPT.B64}$6$x$y", "x", Scheme::kPlain));
}

TEST(PasswordScheme, MalformedHashesAreErrors) {
  EXPECT_FALSE(verifyPassword("{SHA512-CRYPT}$5$abc$def", "x", Scheme::kPlain));
  EXPECT_FALSE(verifyPassword("{SHA256-CRYPT}plaintext", "plaintext", Scheme::kPlain));
  EXPECT_FALSE(verifyPassword("{BLF-CRYPT}$2x$05$abc", "x", Scheme::kPlain));
  EXPECT_FALSE(verifyPassword("{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=1$abc$def", "x", Scheme::kPlain));
  EXPECT_FALSE(verifyPassword("{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cd", "x", Scheme::kPlain));  // 31 hex
  EXPECT_FALSE(verifyPassword("{MD5}zzb4e732631f47e6eb961f34554b7cde", "x", Scheme::kPlain));
  auto empty = verifyPassword("{PLAIN}", "", Scheme::kPlain);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error(), "empty password");
  EXPECT_FALSE(verifyPassword("", "", Scheme::kPlain));
}

TEST(PasswordScheme, SchemeNamesRoundTripCaseInsensitive) {
  for (Scheme s : {Scheme::kPlain, Scheme::kPlainMd5, Scheme::kMd5, Scheme::kMd5Crypt, Scheme::kSha256Crypt,
                   Scheme::kSha512Crypt, Scheme::kBlfCrypt, Scheme::kArgon2id}) {
    EXPECT_EQ(parseScheme(schemeName(s)), s);
  }
  EXPECT_EQ(parseScheme("sha512-crypt"), Scheme::kSha512Crypt);
  EXPECT_EQ(parseScheme("Blf-Crypt"), Scheme::kBlfCrypt);
  EXPECT_FALSE(parseScheme("SHA512"));
  EXPECT_FALSE(parseScheme(""));
}

TEST(PasswordScheme, CorruptCryptHashNeverMatches) {
  // Well-formed prefix, garbage body: crypt fails or differs; never a match.
  auto r = verifyPassword("{SHA512-CRYPT}$6$", "", Scheme::kPlain);
  if (r) {
    EXPECT_FALSE(*r);
  }
  auto b = verifyPassword("{BLF-CRYPT}$2y$99$d0ZEfsiPPHeQs9avIAF4y.3a15YMHBUl1fS7qMqXifFAhn06ExRym",
                          "correct horse", Scheme::kPlain);
  if (b) {
    EXPECT_FALSE(*b);
  }
  auto a = verifyPassword("{ARGON2ID}$argon2id$garbage", "correct horse", Scheme::kPlain);
  if (a) {
    EXPECT_FALSE(*a);
  }
}

TEST(PasswordScheme, PasswordWithNulNeverMatchesCrypt) {
  auto h = makeHash(Scheme::kSha256Crypt, "abc", 1000);
  ASSERT_TRUE(h) << h.error();
  auto r = verifyPassword(*h, std::string("abc\0def", 7), Scheme::kPlain);
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
}

struct MakeCase {
  Scheme scheme;
  unsigned cost;
  const char* prefix;
};

class MakeHashRoundTrip : public ::testing::TestWithParam<MakeCase> {};

TEST_P(MakeHashRoundTrip, GeneratedHashVerifies) {
  const auto& c = GetParam();
  auto h = makeHash(c.scheme, "s3cret:ä", c.cost);
  ASSERT_TRUE(h) << h.error();
  EXPECT_EQ(h->rfind(c.prefix, 0), 0u) << *h;
  auto ok = verifyPassword(*h, "s3cret:ä", Scheme::kPlain);
  ASSERT_TRUE(ok) << ok.error();
  EXPECT_TRUE(*ok);
  auto bad = verifyPassword(*h, "s3cret:a", Scheme::kPlain);
  ASSERT_TRUE(bad);
  EXPECT_FALSE(*bad);
}

INSTANTIATE_TEST_SUITE_P(
    AllSchemes, MakeHashRoundTrip,
    ::testing::Values(MakeCase{Scheme::kPlain, 0, "{PLAIN}"}, MakeCase{Scheme::kPlainMd5, 0, "{PLAIN-MD5}"},
                      MakeCase{Scheme::kMd5, 0, "{MD5}$1$"}, MakeCase{Scheme::kMd5Crypt, 0, "{MD5-CRYPT}$1$"},
                      MakeCase{Scheme::kSha256Crypt, 0, "{SHA256-CRYPT}$5$"},
                      MakeCase{Scheme::kSha512Crypt, 0, "{SHA512-CRYPT}$6$"},
                      MakeCase{Scheme::kSha512Crypt, 1000, "{SHA512-CRYPT}$6$rounds=1000$"},
                      MakeCase{Scheme::kBlfCrypt, 5, "{BLF-CRYPT}$2y$05$"},
                      MakeCase{Scheme::kArgon2id, 0, "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"},
                      MakeCase{Scheme::kArgon2id, 1, "{ARGON2ID}$argon2id$v=19$m=65536,t=1,p=1$"}));

TEST(PasswordScheme, SaltsDiffer) {
  auto a = makeHash(Scheme::kSha512Crypt, "same", 1000);
  auto b = makeHash(Scheme::kSha512Crypt, "same", 1000);
  ASSERT_TRUE(a && b);
  EXPECT_NE(*a, *b);
}

TEST(PasswordScheme, KnownPlainMd5Value) {
  auto h = makeHash(Scheme::kPlainMd5, "secret");
  ASSERT_TRUE(h);
  EXPECT_EQ(*h, "{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69");  // doveadm pw -s PLAIN-MD5 -p secret
}

}  // namespace
}  // namespace mailgate::auth
