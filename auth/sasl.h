#pragma once
// SASL helpers shared by the IMAP, POP3 and SMTP front ends: strict base64 and the
// PLAIN (RFC 4616) and LOGIN mechanisms. Pure: no I/O, no logging, no clock.
#include <cstddef>
#include <string>
#include <string_view>

#include "gateway/core/result.h"

namespace mailgate::auth {

// Standard alphabet (RFC 4648 section 4), padded.
std::string base64Encode(std::string_view data);
// Strict: length a multiple of 4, only alphabet characters, '=' only as the final one
// or two characters, unused bits of the last quantum zero. No whitespace. "" → "".
Result<std::string> base64Decode(std::string_view text);

// Longest authzid / authcid / password accepted (RFC 4616 requires at least 255).
inline constexpr std::size_t kMaxCredentialLength = 1024;

struct PlainCredentials {
  std::string authzid;  // empty, or equal to authcid
  std::string authcid;  // the user name
  std::string password;
};

// Decodes the (already base64-decoded) PLAIN message "authzid NUL authcid NUL passwd".
// Errors: not exactly two NULs, empty authcid or password, a field too long, CR or LF
// in a field, an authzid different from the authcid ("authorization identity not
// supported").
Result<PlainCredentials> decodePlain(std::string_view message);
// The client side: base64 of "authzid NUL authcid NUL passwd" (authzid may be empty).
std::string encodePlain(std::string_view authzid, std::string_view authcid, std::string_view password);

// LOGIN mechanism (draft-murchison-sasl-login): server challenges, already base64.
inline constexpr std::string_view kLoginUsernamePrompt = "VXNlcm5hbWU6";  // "Username:"
inline constexpr std::string_view kLoginPasswordPrompt = "UGFzc3dvcmQ6";  // "Password:"

// Decodes one base64 LOGIN response (user name or password): non-empty, at most
// kMaxCredentialLength bytes, no NUL, CR or LF.
Result<std::string> decodeLoginResponse(std::string_view base64);

}  // namespace mailgate::auth
