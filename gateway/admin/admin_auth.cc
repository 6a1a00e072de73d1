#include "gateway/admin/admin_auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "gateway/admin/bans_api.h"
#include "gateway/core/ascii.h"

namespace mailgate::admin {

namespace {
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}
}  // namespace

bool constantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(a.data()), a.size(), da);
  SHA256(reinterpret_cast<const unsigned char*>(b.data()), b.size(), db);
  return CRYPTO_memcmp(da, db, sizeof da) == 0;
}

std::string_view bearerToken(std::string_view authorization) {
  authorization = trim(authorization);
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !ascii::iequals(authorization.substr(0, kScheme.size()), kScheme))
    return {};
  return trim(authorization.substr(kScheme.size()));
}

AuthResult checkAdminToken(std::string_view configured, std::string_view authorization,
                           std::string_view form_token) {
  if (configured.empty()) return AuthResult::kReadOnly;
  std::string_view given = bearerToken(authorization);
  if (given.empty()) given = form_token;
  if (given.empty()) return AuthResult::kMissing;
  return constantTimeEquals(configured, given) ? AuthResult::kAllowed : AuthResult::kWrong;
}

std::string tokenFromFileContent(std::string_view content) {
  const size_t nl = content.find('\n');
  return std::string(trim(content.substr(0, nl)));
}

std::string_view headerValue(std::string_view head, std::string_view name) {
  size_t pos = head.find('\n');
  while (pos != std::string_view::npos && pos + 1 < head.size()) {
    const size_t start = pos + 1;
    size_t end = head.find('\n', start);
    std::string_view line =
        head.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;  // end of the head
    const size_t colon = line.find(':');
    if (colon != std::string_view::npos && colon == name.size() &&
        ascii::iequals(line.substr(0, colon), name))
      return trim(line.substr(colon + 1));
    pos = end;
  }
  return {};
}

bool parseForm(std::string_view body, std::vector<std::pair<std::string, std::string>>* out) {
  out->clear();
  while (!body.empty()) {
    const size_t amp = body.find('&');
    std::string_view pair = body.substr(0, amp);
    body = amp == std::string_view::npos ? std::string_view() : body.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    std::string k, v;
    if (!percentDecode(pair.substr(0, eq), &k)) return false;
    if (eq != std::string_view::npos && !percentDecode(pair.substr(eq + 1), &v)) return false;
    out->emplace_back(std::move(k), std::move(v));
  }
  return true;
}

}  // namespace mailgate::admin
