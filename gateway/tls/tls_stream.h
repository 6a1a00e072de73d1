#pragma once
// One TLS connection over two memory BIOs: ciphertext in from the socket reader,
// ciphertext out to the socket writer. No I/O here; the session moves the bytes.
#include <openssl/ssl.h>

#include <string>
#include <string_view>

#include "gateway/tls/tls_failure.h"

namespace mailgate::tls {

enum class TlsEvent { kOk, kWant, kClosed, kError };

class TlsStream {
 public:
  explicit TlsStream(SSL* ssl);  // takes ownership
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Ciphertext received from the peer.
  void feed(std::string_view cipher);
  // Continues the handshake: kOk when done, kWant when more input is needed.
  TlsEvent handshake();
  bool handshakeDone() const { return done_; }
  // Appends decrypted bytes to out (up to max); kWant when no more are available now.
  TlsEvent read(std::string* out, size_t max);
  // Encrypts plaintext; ciphertext becomes available through takeOutput().
  TlsEvent write(std::string_view plain);
  // Moves pending ciphertext to out (appends). Returns bytes moved.
  size_t takeOutput(std::string* out);
  size_t pendingOutput() const;
  // Sends close_notify (its bytes via takeOutput()).
  void shutdown();

  const char* version() const { return SSL_get_version(ssl_); }
  const char* cipher() const { return SSL_get_cipher_name(ssl_); }
  std::string serverName() const;
  const std::string& lastError() const { return error_; }
  // The class of the last error (kError): what /metrics counts a failed handshake as.
  HandshakeFailure failure() const { return failure_; }
  SSL* ssl() { return ssl_; }

 private:
  TlsEvent classify(int r);
  SSL* ssl_;
  BIO* rbio_;
  BIO* wbio_;
  bool done_ = false;
  std::string error_;
  HandshakeFailure failure_ = HandshakeFailure::kProtocol;
};

// The class of an OpenSSL error code (ERR_peek_error()); 0 (no code) is kClosed.
HandshakeFailure classifyHandshakeError(unsigned long err);

}  // namespace mailgate::tls
