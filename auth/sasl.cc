#include "auth/sasl.h"

#include <array>
#include <cstdint>

namespace mailgate::auth {
namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// 0..63 for alphabet characters, -1 otherwise.
constexpr std::array<int8_t, 256> makeDecodeTable() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (std::size_t i = 0; i < kAlphabet.size(); ++i)
    t[static_cast<unsigned char>(kAlphabet[i])] = static_cast<int8_t>(i);
  return t;
}
constexpr std::array<int8_t, 256> kDecode = makeDecodeTable();

bool hasLineBreakOrNul(std::string_view s) {
  return s.find_first_of(std::string_view("\0\r\n", 3)) != std::string_view::npos;
}

}  // namespace

std::string base64Encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t v = (static_cast<uint32_t>(static_cast<unsigned char>(data[i])) << 16) |
                 (static_cast<uint32_t>(static_cast<unsigned char>(data[i + 1])) << 8) |
                 static_cast<uint32_t>(static_cast<unsigned char>(data[i + 2]));
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  std::size_t rest = data.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(data[i])) << 16;
    if (rest == 2) v |= static_cast<uint32_t>(static_cast<unsigned char>(data[i + 1])) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

Result<std::string> base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return Error{"invalid base64 length"};
  std::size_t pad = 0;
  if (!text.empty() && text.back() == '=') {
    pad = 1;
    if (text[text.size() - 2] == '=') pad = 2;
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  const std::size_t body = text.size() - pad;
  uint32_t acc = 0;
  for (std::size_t i = 0; i < body; ++i) {
    int8_t d = kDecode[static_cast<unsigned char>(text[i])];
    if (d < 0) return Error{"invalid base64 character"};
    acc = (acc << 6) | static_cast<uint32_t>(d);
    if (i % 4 == 3) {
      out += static_cast<char>((acc >> 16) & 0xff);
      out += static_cast<char>((acc >> 8) & 0xff);
      out += static_cast<char>(acc & 0xff);
      acc = 0;
    }
  }
  if (pad == 1) {  // 3 symbols = 18 bits → 2 bytes, low 2 bits must be zero
    if ((acc & 0x3) != 0) return Error{"non-canonical base64"};
    out += static_cast<char>((acc >> 10) & 0xff);
    out += static_cast<char>((acc >> 2) & 0xff);
  } else if (pad == 2) {  // 2 symbols = 12 bits → 1 byte, low 4 bits must be zero
    if ((acc & 0xf) != 0) return Error{"non-canonical base64"};
    out += static_cast<char>((acc >> 4) & 0xff);
  }
  return out;
}

std::string encodePlain(std::string_view authzid, std::string_view authcid, std::string_view password) {
  std::string plain;
  plain.reserve(authzid.size() + authcid.size() + password.size() + 2);
  plain.append(authzid).append(1, '\0').append(authcid).append(1, '\0').append(password);
  return base64Encode(plain);
}

Result<PlainCredentials> decodePlain(std::string_view message) {
  const std::size_t first = message.find('\0');
  if (first == std::string_view::npos) return Error{"malformed PLAIN message"};
  const std::size_t second = message.find('\0', first + 1);
  if (second == std::string_view::npos) return Error{"malformed PLAIN message"};
  if (message.find('\0', second + 1) != std::string_view::npos) return Error{"malformed PLAIN message"};

  std::string_view authzid = message.substr(0, first);
  std::string_view authcid = message.substr(first + 1, second - first - 1);
  std::string_view password = message.substr(second + 1);
  if (authcid.empty()) return Error{"empty authentication identity"};
  if (password.empty()) return Error{"empty password"};
  if (authzid.size() > kMaxCredentialLength || authcid.size() > kMaxCredentialLength ||
      password.size() > kMaxCredentialLength)
    return Error{"credentials too long"};
  if (hasLineBreakOrNul(authzid) || hasLineBreakOrNul(authcid) || hasLineBreakOrNul(password))
    return Error{"invalid characters in credentials"};
  if (!authzid.empty() && authzid != authcid) return Error{"authorization identity not supported"};
  return PlainCredentials{std::string(authzid), std::string(authcid), std::string(password)};
}

Result<std::string> decodeLoginResponse(std::string_view base64) {
  auto decoded = base64Decode(base64);
  if (!decoded) return Error{decoded.error()};
  if (decoded->empty()) return Error{"empty response"};
  if (decoded->size() > kMaxCredentialLength) return Error{"credentials too long"};
  if (hasLineBreakOrNul(*decoded)) return Error{"invalid characters in credentials"};
  return std::move(decoded).value();
}

}  // namespace mailgate::auth
