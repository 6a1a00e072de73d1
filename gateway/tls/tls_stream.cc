#include "gateway/tls/tls_stream.h"

#include <openssl/err.h>

#include <algorithm>

#include "gateway/tls/tls_context.h"

namespace mailgate::tls {

TlsStream::TlsStream(SSL* ssl) : ssl_(ssl) {
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(rbio_, -1);
  SSL_set_bio(ssl_, rbio_, wbio_);  // SSL owns both now
}

TlsStream::~TlsStream() { SSL_free(ssl_); }

void TlsStream::feed(std::string_view cipher) {
  if (!cipher.empty()) BIO_write(rbio_, cipher.data(), static_cast<int>(cipher.size()));
}

TlsEvent TlsStream::classify(int r) {
  int e = SSL_get_error(ssl_, r);
  switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return TlsEvent::kWant;
    case SSL_ERROR_ZERO_RETURN:
      return TlsEvent::kClosed;
    default:
      failure_ = classifyHandshakeError(ERR_peek_error());
      error_ = drainErrors();
      if (error_.empty()) error_ = "ssl error " + std::to_string(e);
      return TlsEvent::kError;
  }
}

HandshakeFailure classifyHandshakeError(unsigned long err) {
  if (err == 0) return HandshakeFailure::kClosed;  // EOF or a system error: nothing from TLS itself
  if (ERR_GET_LIB(err) != ERR_LIB_SSL) return HandshakeFailure::kProtocol;
  switch (ERR_GET_REASON(err)) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_VERSION_TOO_HIGH:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_INAPPROPRIATE_FALLBACK:
      return HandshakeFailure::kVersion;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
    case SSL_R_NO_CIPHERS_AVAILABLE:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
    case SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY:
      return HandshakeFailure::kCipher;
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
      return HandshakeFailure::kCertificate;
    default:
      break;
  }
  // Any other alert the peer sent (reason codes SSL_AD_REASON_OFFSET + alert).
  if (ERR_GET_REASON(err) >= SSL_AD_REASON_OFFSET) return HandshakeFailure::kAlert;
  return HandshakeFailure::kProtocol;
}

TlsEvent TlsStream::handshake() {
  if (done_) return TlsEvent::kOk;
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    done_ = true;
    return TlsEvent::kOk;
  }
  return classify(r);
}

TlsEvent TlsStream::read(std::string* out, size_t max) {
  // Decrypts straight into the caller's buffer: no intermediate copy.
  constexpr size_t kChunk = 16384;
  size_t got = 0;
  while (got < max) {
    size_t want = std::min(kChunk, max - got);
    size_t old = out->size();
    out->resize(old + want);
    ERR_clear_error();
    int r = SSL_read(ssl_, out->data() + old, static_cast<int>(want));
    if (r <= 0) {
      out->resize(old);
      return classify(r);
    }
    out->resize(old + static_cast<size_t>(r));
    got += static_cast<size_t>(r);
  }
  return TlsEvent::kOk;
}

TlsEvent TlsStream::write(std::string_view plain) {
  while (!plain.empty()) {
    ERR_clear_error();
    int r = SSL_write(ssl_, plain.data(), static_cast<int>(std::min<size_t>(plain.size(), 1 << 20)));
    if (r <= 0) return classify(r);
    plain.remove_prefix(static_cast<size_t>(r));
  }
  return TlsEvent::kOk;
}

size_t TlsStream::pendingOutput() const { return BIO_ctrl_pending(wbio_); }

size_t TlsStream::takeOutput(std::string* out) {
  size_t n = BIO_ctrl_pending(wbio_);
  if (n == 0) return 0;
  size_t old = out->size();
  out->resize(old + n);
  int r = BIO_read(wbio_, out->data() + old, static_cast<int>(n));
  out->resize(old + (r > 0 ? static_cast<size_t>(r) : 0));
  return r > 0 ? static_cast<size_t>(r) : 0;
}

void TlsStream::shutdown() {
  ERR_clear_error();
  if (done_) SSL_shutdown(ssl_);
  ERR_clear_error();
}

std::string TlsStream::serverName() const {
  const char* n = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
  return n ? n : "";
}

}  // namespace mailgate::tls
