#include "gateway/tls/tls_context.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <ctime>

#include "gateway/core/ascii.h"

namespace mailgate::tls {

std::string drainErrors() {
  std::string out;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

namespace {

std::vector<std::string> certNames(X509* x) {
  std::vector<std::string> names;
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
      if (gn->type != GEN_DNS) continue;
      const unsigned char* d = ASN1_STRING_get0_data(gn->d.dNSName);
      int len = ASN1_STRING_length(gn->d.dNSName);
      names.push_back(
          ascii::lower(std::string_view(reinterpret_cast<const char*>(d), static_cast<size_t>(len))));
    }
    GENERAL_NAMES_free(sans);
  }
  if (names.empty()) {
    char cn[256];
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn) > 0)
      names.push_back(ascii::lower(cn));
  }
  return names;
}

bool nameMatches(const std::string& pattern, const std::string& host) {
  if (pattern == host) return true;
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    auto dot = host.find('.');
    return dot != std::string::npos && dot > 0 && host.substr(dot + 1) == pattern.substr(2);
  }
  return false;
}

int sniCallback(SSL* ssl, int* /*alert*/, void* arg) {
  const auto* self = static_cast<const ServerTls*>(arg);
  const char* host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!host) return SSL_TLSEXT_ERR_OK;
  SSL_CTX* ctx = self->select(host);
  if (ctx && ctx != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, ctx);
  return SSL_TLSEXT_ERR_OK;
}

int minVersion(const std::string& v) { return v == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION; }

}  // namespace

CertificateInfo certificateInfo(X509* cert) {
  CertificateInfo info;
  if (!cert) return info;
  char cn[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0) info.subject_cn = cn;
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1) info.not_after = static_cast<int64_t>(timegm(&tm));
  return info;
}

Result<std::shared_ptr<ServerTls>> ServerTls::build(const conf::TlsConfig& cfg) {
  auto self = std::make_shared<ServerTls>();
  for (const auto& c : cfg.certificates) {
    CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    if (!ctx) return Error{"SSL_CTX_new: " + drainErrors()};
    SSL_CTX_set_min_proto_version(ctx.get(), minVersion(cfg.min_version));
    SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx.get(),
                        SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (!cfg.ciphers.empty() && SSL_CTX_set_cipher_list(ctx.get(), cfg.ciphers.c_str()) != 1)
      return Error{"tls.ciphers: " + drainErrors()};
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), c.cert.c_str()) != 1)
      return Error{c.cert + ": " + drainErrors()};
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), c.key.c_str(), SSL_FILETYPE_PEM) != 1)
      return Error{c.key + ": " + drainErrors()};
    if (SSL_CTX_check_private_key(ctx.get()) != 1) return Error{c.key + ": key does not match " + c.cert};
    SSL_CTX_callback_ctrl(ctx.get(), SSL_CTRL_SET_TLSEXT_SERVERNAME_CB,
                          reinterpret_cast<void (*)()>(sniCallback));
    SSL_CTX_ctrl(ctx.get(), SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, self.get());
    Entry e;
    e.names = certNames(SSL_CTX_get0_certificate(ctx.get()));
    CertificateInfo info = certificateInfo(SSL_CTX_get0_certificate(ctx.get()));
    info.path = c.cert;
    self->certificates_.push_back(std::move(info));
    e.ctx = std::move(ctx);
    self->entries_.push_back(std::move(e));
  }
  return self;
}

SSL_CTX* ServerTls::select(const char* host) const {
  std::string h = ascii::lower(host);
  for (const auto& e : entries_)
    for (const auto& n : e.names)
      if (nameMatches(n, h)) return e.ctx.get();
  return nullptr;
}

SSL* ServerTls::newSsl() const {
  SSL* ssl = SSL_new(defaultCtx());
  if (ssl) SSL_set_accept_state(ssl);
  return ssl;
}

Result<std::shared_ptr<ClientTls>> ClientTls::build(const conf::BackendConfig& b) {
  auto self = std::make_shared<ClientTls>();
  self->ctx_.reset(SSL_CTX_new(TLS_client_method()));
  if (!self->ctx_) return Error{"SSL_CTX_new: " + drainErrors()};
  SSL_CTX* ctx = self->ctx_.get();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  self->verify_ = b.tls_verify;
  self->name_ = b.tls_name.empty() ? b.host : b.tls_name;
  if (b.tls_verify) {
    int ok = b.tls_ca.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                              : SSL_CTX_load_verify_locations(ctx, b.tls_ca.c_str(), nullptr);
    if (ok != 1) return Error{"backend " + b.name + " tls_ca: " + drainErrors()};
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  return self;
}

SSL* ClientTls::newSsl() const {
  SSL* ssl = SSL_new(ctx_.get());
  if (!ssl) return nullptr;
  SSL_set_connect_state(ssl);
  // SNI only for names, not IP literals.
  bool is_ip =
      name_.find_first_not_of("0123456789.") == std::string::npos || name_.find(':') != std::string::npos;
  if (!is_ip)
    SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(name_.c_str()));
  if (verify_) {
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name_.c_str());
    } else {
      SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(ssl, name_.c_str());
    }
  }
  return ssl;
}

}  // namespace mailgate::tls
