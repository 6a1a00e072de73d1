#pragma once
// SSL_CTX construction: the server side with SNI selection among the configured
// certificates (names from each certificate's SAN, CN as fallback; first = default),
// and the client side used towards storage nodes.
#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "conf/config.h"
#include "gateway/core/result.h"

namespace mailgate::tls {

struct CtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, CtxDeleter>;

// A configured server certificate, as /metrics shows it.
struct CertificateInfo {
  std::string path;        // the certificate file (tls.certificates[].cert)
  std::string subject_cn;  // the subject's common name ("" if none)
  int64_t not_after = 0;   // the end of its validity, Unix seconds
};

class ServerTls {
 public:
  static Result<std::shared_ptr<ServerTls>> build(const conf::TlsConfig& cfg);
  const std::vector<CertificateInfo>& certificates() const { return certificates_; }
  SSL_CTX* defaultCtx() const { return entries_.empty() ? nullptr : entries_.front().ctx.get(); }
  // Certificate whose names match `host` (exact or *.wildcard, case-insensitive), or null.
  SSL_CTX* select(const char* host) const;
  SSL* newSsl() const;

 private:
  struct Entry {
    CtxPtr ctx;
    std::vector<std::string> names;  // lower-case; "*.example.org" kept as is
  };
  std::vector<Entry> entries_;
  std::vector<CertificateInfo> certificates_;
};

// The subject CN and notAfter of a certificate.
CertificateInfo certificateInfo(X509* cert);

class ClientTls {
 public:
  static Result<std::shared_ptr<ClientTls>> build(const conf::BackendConfig& backend);
  // New client SSL with SNI and (unless tls_verify: false) host-name verification.
  SSL* newSsl() const;

 private:
  CtxPtr ctx_;
  std::string name_;
  bool verify_ = true;
};

// The OpenSSL error queue as one string, and clears it.
std::string drainErrors();

}  // namespace mailgate::tls
