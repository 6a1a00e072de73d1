#include "auth/password_scheme.h"

#include <argon2.h>
#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "auth/sasl.h"
#include "gateway/core/ascii.h"

namespace mailgate::auth {
namespace {

constexpr std::size_t kMd5Size = 16;
using Md5Digest = std::array<unsigned char, kMd5Size>;

// Dovecot's ARGON2ID defaults (doveadm pw -s ARGON2ID): m=64 MiB, t=3, p=1.
constexpr uint32_t kArgonMemoryKiB = 65536;
constexpr uint32_t kArgonIterations = 3;
constexpr uint32_t kArgonLanes = 1;
constexpr std::size_t kArgonSaltLen = 16;
constexpr std::size_t kArgonHashLen = 32;

int hexValue(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// 32 hex digits or 24 base64 characters → 16 bytes.
bool decodeMd5(std::string_view text, Md5Digest* out) {
  if (text.size() == 2 * kMd5Size && std::all_of(text.begin(), text.end(), ascii::isHexDigit)) {
    for (std::size_t i = 0; i < kMd5Size; ++i)
      (*out)[i] = static_cast<unsigned char>(hexValue(text[2 * i]) * 16 + hexValue(text[2 * i + 1]));
    return true;
  }
  if (text.size() == 24) {
    auto raw = base64Decode(text);
    if (raw && raw->size() == kMd5Size) {
      std::memcpy(out->data(), raw->data(), kMd5Size);
      return true;
    }
  }
  return false;
}

bool md5(std::string_view data, Md5Digest* out) {
  unsigned int len = 0;
  return EVP_Digest(data.data(), data.size(), out->data(), &len, EVP_md5(), nullptr) == 1 && len == kMd5Size;
}

bool startsWith(std::string_view s, std::string_view prefix) noexcept {
  return s.substr(0, prefix.size()) == prefix;
}

// Checks the shape of the value for its scheme (not its correctness: crypt does that).
bool wellFormed(Scheme scheme, std::string_view hash) {
  Md5Digest digest{};
  switch (scheme) {
    case Scheme::kPlain:
      return true;
    case Scheme::kPlainMd5:
      return decodeMd5(hash, &digest);
    case Scheme::kMd5:
      return startsWith(hash, "$1$") ? hash.size() > 3 : decodeMd5(hash, &digest);
    case Scheme::kMd5Crypt:
      return startsWith(hash, "$1$") && hash.size() > 3;
    case Scheme::kSha256Crypt:
      return startsWith(hash, "$5$") && hash.size() > 3;
    case Scheme::kSha512Crypt:
      return startsWith(hash, "$6$") && hash.size() > 3;
    case Scheme::kBlfCrypt:
      return (startsWith(hash, "$2y$") || startsWith(hash, "$2b$") || startsWith(hash, "$2a$")) &&
             hash.size() > 4;
    case Scheme::kArgon2id:
      return startsWith(hash, "$argon2id$") && hash.size() > 10;
  }
  return false;
}

// crypt(3) through libxcrypt's reentrant crypt_rn; the 32 KiB work area is per call.
bool cryptVerify(const std::string& hash, std::string_view password) {
  if (password.find('\0') != std::string_view::npos) return false;
  auto data = std::make_unique<crypt_data>();
  const std::string pw(password);
  const char* out = crypt_rn(pw.c_str(), hash.c_str(), data.get(), static_cast<int>(sizeof(crypt_data)));
  bool ok = false;
  if (out != nullptr && out[0] != '*') {
    const std::size_t n = std::strlen(out);
    ok = n == hash.size() && CRYPTO_memcmp(out, hash.data(), n) == 0;
  }
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  return ok;
}

bool md5Verify(std::string_view hash, std::string_view password) {
  Md5Digest want{}, got{};
  if (!decodeMd5(hash, &want) || !md5(password, &got)) return false;
  return CRYPTO_memcmp(want.data(), got.data(), kMd5Size) == 0;
}

// PLAIN: compare SHA-256 digests so the time does not depend on where, or whether
// in length, the strings differ.
bool plainVerify(std::string_view stored, std::string_view password) {
  std::array<unsigned char, 32> a{}, b{};
  unsigned int la = 0, lb = 0;
  if (EVP_Digest(stored.data(), stored.size(), a.data(), &la, EVP_sha256(), nullptr) != 1) return false;
  if (EVP_Digest(password.data(), password.size(), b.data(), &lb, EVP_sha256(), nullptr) != 1) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string prefixed(Scheme scheme, std::string_view hash) {
  std::string out = "{";
  out += schemeName(scheme);
  out += '}';
  out += hash;
  return out;
}

Result<std::string> makeCrypt(const char* prefix, unsigned cost, std::string_view password) {
  if (password.find('\0') != std::string_view::npos) return Error{"password contains NUL"};
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  if (crypt_gensalt_rn(prefix, cost, nullptr, 0, setting, sizeof setting) == nullptr)
    return Error{"crypt_gensalt failed"};
  auto data = std::make_unique<crypt_data>();
  const std::string pw(password);
  const char* out = crypt_rn(pw.c_str(), setting, data.get(), static_cast<int>(sizeof(crypt_data)));
  if (out == nullptr || out[0] == '*') return Error{"crypt failed"};
  std::string hash(out);
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  return hash;
}

}  // namespace

std::optional<Scheme> parseScheme(std::string_view name) noexcept {
  if (ascii::iequals(name, "PLAIN") || ascii::iequals(name, "CLEAR") || ascii::iequals(name, "CLEARTEXT"))
    return Scheme::kPlain;
  if (ascii::iequals(name, "PLAIN-MD5")) return Scheme::kPlainMd5;
  if (ascii::iequals(name, "MD5")) return Scheme::kMd5;
  if (ascii::iequals(name, "MD5-CRYPT")) return Scheme::kMd5Crypt;
  if (ascii::iequals(name, "SHA256-CRYPT")) return Scheme::kSha256Crypt;
  if (ascii::iequals(name, "SHA512-CRYPT")) return Scheme::kSha512Crypt;
  if (ascii::iequals(name, "BLF-CRYPT")) return Scheme::kBlfCrypt;
  if (ascii::iequals(name, "ARGON2ID")) return Scheme::kArgon2id;
  return std::nullopt;
}

std::string_view schemeName(Scheme scheme) noexcept {
  switch (scheme) {
    case Scheme::kPlain:
      return "PLAIN";
    case Scheme::kPlainMd5:
      return "PLAIN-MD5";
    case Scheme::kMd5:
      return "MD5";
    case Scheme::kMd5Crypt:
      return "MD5-CRYPT";
    case Scheme::kSha256Crypt:
      return "SHA256-CRYPT";
    case Scheme::kSha512Crypt:
      return "SHA512-CRYPT";
    case Scheme::kBlfCrypt:
      return "BLF-CRYPT";
    case Scheme::kArgon2id:
      return "ARGON2ID";
  }
  return "?";
}

Result<StoredHash> parseStoredHash(std::string_view stored, Scheme default_scheme) {
  StoredHash out;
  out.scheme = default_scheme;
  std::string_view hash = stored;
  if (!stored.empty() && stored.front() == '{') {
    const std::size_t close = stored.find('}');
    if (close == std::string_view::npos) return Error{"malformed scheme prefix"};
    const std::string_view name = stored.substr(1, close - 1);
    auto scheme = parseScheme(name);
    // Dovecot's encoding suffix: {PLAIN-MD5.HEX}, {PLAIN-MD5.B64}; both forms are detected anyway.
    if (!scheme && name.size() > 4 &&
        (ascii::iequals(name.substr(name.size() - 4), ".HEX") ||
         ascii::iequals(name.substr(name.size() - 4), ".B64"))) {
      auto base = parseScheme(name.substr(0, name.size() - 4));
      if (base == Scheme::kPlainMd5) scheme = base;
    }
    if (!scheme) {
      std::string msg = "unknown scheme {";
      // The name comes from a local file, but keep the message bounded and printable.
      for (char c : name.substr(0, 32)) msg += (c >= 0x20 && c < 0x7f) ? c : '?';
      msg += '}';
      return Error{std::move(msg)};
    }
    out.scheme = *scheme;
    hash = stored.substr(close + 1);
  }
  if (hash.empty()) return Error{"empty password"};
  if (!wellFormed(out.scheme, hash)) {
    std::string msg = "malformed {";
    msg += schemeName(out.scheme);
    msg += "} hash";
    return Error{std::move(msg)};
  }
  out.hash = std::string(hash);
  return out;
}

bool verifyPassword(const StoredHash& stored, std::string_view password) {
  switch (stored.scheme) {
    case Scheme::kPlain:
      return plainVerify(stored.hash, password);
    case Scheme::kPlainMd5:
      return md5Verify(stored.hash, password);
    case Scheme::kMd5:
      return startsWith(stored.hash, "$1$") ? cryptVerify(stored.hash, password)
                                            : md5Verify(stored.hash, password);
    case Scheme::kMd5Crypt:
    case Scheme::kSha256Crypt:
    case Scheme::kSha512Crypt:
    case Scheme::kBlfCrypt:
      return wellFormed(stored.scheme, stored.hash) && cryptVerify(stored.hash, password);
    case Scheme::kArgon2id:
      // argon2id_verify recomputes with the encoded parameters and compares in constant time.
      return wellFormed(stored.scheme, stored.hash) &&
             argon2id_verify(stored.hash.c_str(), password.data(), password.size()) == ARGON2_OK;
  }
  return false;
}

Result<bool> verifyPassword(std::string_view stored, std::string_view password, Scheme default_scheme) {
  auto parsed = parseStoredHash(stored, default_scheme);
  if (!parsed) return Error{parsed.error()};
  return verifyPassword(*parsed, password);
}

Result<std::string> makeHash(Scheme scheme, std::string_view password, unsigned cost) {
  switch (scheme) {
    case Scheme::kPlain:
      return prefixed(scheme, password);
    case Scheme::kPlainMd5: {
      Md5Digest d{};
      if (!md5(password, &d)) return Error{"md5 failed"};
      static constexpr char kHex[] = "0123456789abcdef";
      std::string hex;
      for (unsigned char c : d) {
        hex += kHex[c >> 4];
        hex += kHex[c & 15];
      }
      return prefixed(scheme, hex);
    }
    case Scheme::kMd5:
    case Scheme::kMd5Crypt:
    case Scheme::kSha256Crypt:
    case Scheme::kSha512Crypt:
    case Scheme::kBlfCrypt: {
      const char* prefix = "$6$";
      if (scheme == Scheme::kMd5 || scheme == Scheme::kMd5Crypt) prefix = "$1$";
      if (scheme == Scheme::kSha256Crypt) prefix = "$5$";
      if (scheme == Scheme::kBlfCrypt) prefix = "$2y$";
      // MD5-CRYPT has a fixed cost; libxcrypt rejects a count for it.
      auto hash = makeCrypt(prefix, std::string_view(prefix) == "$1$" ? 0 : cost, password);
      if (!hash) return Error{hash.error()};
      return prefixed(scheme, *hash);
    }
    case Scheme::kArgon2id: {
      unsigned char salt[kArgonSaltLen];
      if (RAND_bytes(salt, sizeof salt) != 1) return Error{"no randomness for salt"};
      const uint32_t t = cost == 0 ? kArgonIterations : cost;
      std::string encoded(
          argon2_encodedlen(t, kArgonMemoryKiB, kArgonLanes, sizeof salt, kArgonHashLen, Argon2_id), '\0');
      int rc = argon2id_hash_encoded(t, kArgonMemoryKiB, kArgonLanes, password.data(), password.size(), salt,
                                     sizeof salt, kArgonHashLen, encoded.data(), encoded.size());
      if (rc != ARGON2_OK) return Error{argon2_error_message(rc)};
      encoded.resize(std::strlen(encoded.c_str()));
      return prefixed(scheme, encoded);
    }
  }
  return Error{"unknown scheme"};
}

}  // namespace mailgate::auth
