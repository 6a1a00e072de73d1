#pragma once
// Stored password hashes in Dovecot's "{SCHEME}hash" notation: parse, verify
// (constant time), and generate (tests, demo fixtures).
//
// Schemes (Dovecot names, case-insensitive):
//   PLAIN (aliases CLEAR, CLEARTEXT)  the password itself
//   PLAIN-MD5 (.HEX/.B64 suffixes)    MD5 of the password, 32 hex digits or 24 base64 chars
//   MD5                               Dovecot's MD5 is MD5-CRYPT ("$1$..."); a 32-hex value is
//                                     accepted as PLAIN-MD5 (legacy tables, seed 004)
//   MD5-CRYPT                         "$1$..." via crypt(3)
//   SHA256-CRYPT                      "$5$..." via crypt(3)
//   SHA512-CRYPT                      "$6$..." via crypt(3)
//   BLF-CRYPT                         "$2y$", "$2b$", "$2a$" (bcrypt) via libxcrypt
//   ARGON2ID                          "$argon2id$..." via libargon2
// An unknown scheme or a value that does not fit its scheme is an error, never a login.
//
// Verification is blocking (crypt and argon2 are deliberately slow): call it on the
// worker pool, never on a reactor thread.
#include <optional>
#include <string>
#include <string_view>

#include "gateway/core/result.h"

namespace mailgate::auth {

enum class Scheme {
  kPlain,
  kPlainMd5,
  kMd5,  // MD5-CRYPT when the value starts with "$1$", else PLAIN-MD5 hex
  kMd5Crypt,
  kSha256Crypt,
  kSha512Crypt,
  kBlfCrypt,
  kArgon2id,
};

// "SHA512-CRYPT" → kSha512Crypt (case-insensitive); nullopt for an unknown name.
std::optional<Scheme> parseScheme(std::string_view name) noexcept;
// Canonical Dovecot name ("SHA512-CRYPT").
std::string_view schemeName(Scheme scheme) noexcept;

struct StoredHash {
  Scheme scheme = Scheme::kPlain;
  std::string hash;  // the value after the "{SCHEME}" prefix
};

// Splits "{SCHEME}hash" (or "hash", which takes default_scheme) and checks that the
// hash has the form its scheme requires. Errors: "unknown scheme {FOO}",
// "malformed {SCHEME} hash", "empty password".
Result<StoredHash> parseStoredHash(std::string_view stored, Scheme default_scheme);

// true when password matches. Comparisons are constant time (CRYPTO_memcmp over
// fixed-size digests or whole crypt outputs). A password containing NUL never matches.
bool verifyPassword(const StoredHash& stored, std::string_view password);

// parseStoredHash + verifyPassword; an error means the stored value is unusable.
Result<bool> verifyPassword(std::string_view stored, std::string_view password, Scheme default_scheme);

// Generates "{SCHEME}hash" for password with a fresh random salt. cost 0 = the
// scheme's default; otherwise rounds (SHA*-CRYPT), log2 rounds (BLF-CRYPT) or
// iterations t (ARGON2ID, memory 64 MiB as Dovecot). PLAIN-MD5 and MD5 hashes are
// unsalted; MD5 produces MD5-CRYPT like Dovecot. For tests and demo fixtures.
Result<std::string> makeHash(Scheme scheme, std::string_view password, unsigned cost = 0);

}  // namespace mailgate::auth
