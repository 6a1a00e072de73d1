#pragma once
// The admin endpoint's credential check, the pure part. A state-changing request
// (ban, lift, drain, quarantine release or delete) carries the token of
// admin.token_file either as `Authorization: Bearer <token>` (API, CLI) or as the
// form field `token` (the status page's buttons). Without a configured token the
// endpoint is read-only; GET never changes state.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailgate::admin {

enum class AuthResult {
  kAllowed,
  kReadOnly,  // no token configured: 403
  kMissing,   // no credential given: 401
  kWrong,     // a credential that does not match: 401
};

// Compares in time independent of where (and of whether) the two differ: both are
// hashed (SHA-256) and the digests compared with CRYPTO_memcmp.
bool constantTimeEquals(std::string_view a, std::string_view b);
// The credential of an Authorization header value "Bearer <token>" (scheme any
// case); empty when it is not one.
std::string_view bearerToken(std::string_view authorization);
// The bearer credential wins over the form field when both are given.
AuthResult checkAdminToken(std::string_view configured, std::string_view authorization,
                           std::string_view form_token);
// The token in a token file's content: its first line without surrounding blanks
// (spaces, tabs, CR); empty when there is none.
std::string tokenFromFileContent(std::string_view content);

// The value of header `name` (any case) in a request head (the request line, then
// header lines, CRLF or LF); the first one; empty when absent. Blanks trimmed.
std::string_view headerValue(std::string_view head, std::string_view name);
// An application/x-www-form-urlencoded body; false on a bad %-escape or a NUL.
bool parseForm(std::string_view body, std::vector<std::pair<std::string, std::string>>* out);

}  // namespace mailgate::admin
