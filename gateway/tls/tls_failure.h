#pragma once
// Why a TLS handshake failed, in a few classes an operator can act on (counted per
// listener for /metrics). The OpenSSL reason code decides the class (tls_stream.cc).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mailgate::tls {

enum class HandshakeFailure : uint8_t {
  kProtocol,     // not TLS at all (plain text, HTTP), malformed or unexpected messages
  kVersion,      // no protocol version in common (an old client below tls.min_version)
  kCipher,       // no cipher suite, group or signature algorithm in common
  kCertificate,  // the peer refused our certificate, or sent none / a bad one when one was needed
  kAlert,        // the peer ended the handshake with another alert
  kClosed,       // the peer closed the connection in the middle of the handshake
};
inline constexpr size_t kHandshakeFailureCount = 6;

inline std::string_view handshakeFailureName(HandshakeFailure f) {
  switch (f) {
    case HandshakeFailure::kProtocol: return "protocol";
    case HandshakeFailure::kVersion: return "version";
    case HandshakeFailure::kCipher: return "cipher";
    case HandshakeFailure::kCertificate: return "certificate";
    case HandshakeFailure::kAlert: return "alert";
    case HandshakeFailure::kClosed: return "closed";
  }
  return "protocol";
}

}  // namespace mailgate::tls
