// The configuration's offline tools: --check-config, --dump-config, --auth-test,
// --route (cli_lookup.h). They print to stdout what was asked and to stderr what
// went wrong; the gateway's log lines are kept to warnings and errors, as text.
#include "gateway/admin/cli_lookup.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "auth/postgres_routes.h"
#include "conf/config.h"
#include "conf/dump.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/session/runtime.h"
#include "routing/router.h"

namespace mailgate::admin {
namespace {

// Look-ups print their answer on stdout; the runtime's own lines (directory loaded,
// ...) would only be noise there, so only warnings and errors are shown, as text.
void quietLog(log::Level level) {
  log::setFormat(log::Format::kText);
  log::setLevel(level);
}

std::string opensslReason() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    if (!out.empty()) continue;  // the first is the cause; drain the rest
    const char* r = ERR_reason_error_string(e);
    out = r ? r : "error " + std::to_string(e);
  }
  return out.empty() ? "unknown error" : out;
}

bool readable(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), R_OK) == 0;
}

// Each certificate and key the loader found readable: is it a certificate (chain), a
// private key, and do the two belong together? Problems at the position of the entry.
void checkCertificates(const conf::Config& c, std::vector<conf::ConfigError>* errors) {
  for (size_t i = 0; i < c.tls.certificates.size(); ++i) {
    const conf::CertificateConfig& cc = c.tls.certificates[i];
    const std::string where = "tls.certificates[" + std::to_string(i) + "]";
    ERR_clear_error();
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
    if (!ctx) return;
    bool cert_ok = false;
    if (readable(cc.cert)) {
      if (SSL_CTX_use_certificate_chain_file(ctx.get(), cc.cert.c_str()) == 1)
        cert_ok = true;
      else
        errors->push_back({c.path, cc.cert_pos.line, cc.cert_pos.column,
                           where + ".cert: " + cc.cert + ": not a PEM certificate: " + opensslReason()});
    }
    EVP_PKEY* key = nullptr;
    if (readable(cc.key)) {
      if (BIO* bio = BIO_new_file(cc.key.c_str(), "r")) {
        key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, const_cast<char*>(""));
        BIO_free(bio);
      }
      if (!key)
        errors->push_back({c.path, cc.key_pos.line, cc.key_pos.column,
                           where + ".key: " + cc.key + ": not a PEM private key (or one with a passphrase): " +
                               opensslReason()});
    }
    if (cert_ok && key && X509_check_private_key(SSL_CTX_get0_certificate(ctx.get()), key) != 1)
      errors->push_back({c.path, cc.key_pos.line, cc.key_pos.column,
                         where + ".key: " + cc.key + " does not match the certificate " + cc.cert});
    EVP_PKEY_free(key);
    ERR_clear_error();
  }
}

// Loads FILE for a look-up: errors to stderr (false).
bool loadFor(const std::string& path, conf::LoadResult* out) {
  *out = conf::loadConfigFile(path);
  for (const auto& e : out->errors) std::fprintf(stderr, "%s\n", e.format().c_str());
  return out->errors.empty();
}

const conf::ListenerConfig* pickListener(const conf::Config& c, bool smtp) {
  for (const auto& l : c.listeners) {
    const bool is_smtp = l.protocol == conf::Protocol::kSmtp || l.protocol == conf::Protocol::kSubmission;
    if (is_smtp == smtp) return &l;
  }
  return c.listeners.empty() ? nullptr : &c.listeners.front();
}

// The facts a session on this listener from the local host would have.
filters::SessionFacts factsFor(const conf::ListenerConfig* l, const std::string& id) {
  filters::SessionFacts f;
  f.session_id = id;
  f.client_ip = "127.0.0.1";
  f.local_ip = "127.0.0.1";
  if (!l) return f;
  f.listener = l->name;
  switch (l->protocol) {
    case conf::Protocol::kImap: f.protocol = "imap"; break;
    case conf::Protocol::kPop3: f.protocol = "pop3"; break;
    case conf::Protocol::kSmtp: f.protocol = "smtp"; break;
    case conf::Protocol::kSubmission:
      f.protocol = "smtp";
      f.submission = true;
      break;
  }
  if (!l->listen.empty()) {
    conf::ListenAddress la;
    if (conf::parseListenAddress(l->listen.front(), &la, nullptr)) f.local_port = la.port;
  }
  f.secured = l->tls != conf::TlsMode::kNone;
  if (f.secured) f.tls_version = "TLSv1.3";
  return f;
}

std::string describeBackend(const routing::Backend* b) {
  const conf::BackendConfig& c = *b->config;
  std::string ports;
  auto add = [&ports](const char* name, uint16_t p) {
    if (p) ports += std::string(ports.empty() ? "" : ", ") + name + " " + std::to_string(p);
  };
  add("imap", c.ports.imap);
  add("pop3", c.ports.pop3);
  add("smtp", c.ports.smtp);
  add("lmtp", c.ports.lmtp);
  std::string out = c.name + " (" + c.host + (ports.empty() ? "" : ": " + ports) + ")";
  const int state = b->admin.load();
  if (state != static_cast<int>(routing::AdminState::kActive))
    out += " [" + std::string(routing::adminStateName(static_cast<routing::AdminState>(state))) +
           ": takes no new sessions]";
  return out;
}

// Prints the route of address and why, in the order routing::Router::route looks.
bool printRoute(session::Runtime& rt, const std::string& address) {
  routing::Router& router = *rt.router;
  const std::string a = ascii::lower(address);
  const size_t at = a.rfind('@');
  const std::string domain = at == std::string::npos ? std::string() : a.substr(at + 1);
  std::string why;
  routing::Route r;
  if (auto table = router.table()) {
    const routing::RouteEntry* use = nullptr;
    std::string kind;
    for (const auto& e : table->entries)  // a user key: the last one wins
      if (at != std::string::npos && ascii::lower(e.key) == a) use = &e, kind = "user";
    if (!use && !domain.empty())
      for (const auto& e : table->entries)
        if (ascii::lower(e.key) == domain) {
          use = &e, kind = "domain";
          break;
        }
    if (!use)
      for (const auto& e : table->entries)
        if (e.key == "*") {
          use = &e, kind = "default";
          break;
        }
    if (use) {
      r = router.resolve(use->primary, use->secondary);
      if (r.primary)
        why = "the directory's routing map, " + kind + " entry \"" + use->key + "\"";
      else
        std::printf("note: the routing map's entry \"%s\" names no usable node (%s); routing.static applies\n",
                    use->key.c_str(), use->primary.c_str());
    }
  }
  if (!r.primary) {
    const conf::RouteConfig* match = nullptr;
    const conf::RouteConfig* star = nullptr;
    for (const auto& s : rt.config->routing.static_routes) {
      if (s.domain == "*") star = &s;
      else if (!match && !domain.empty() && ascii::iequals(s.domain, domain)) match = &s;
    }
    if (match) {
      r = router.resolve(match->primary, match->secondary);
      why = "routing.static, domain \"" + match->domain + "\"";
    } else if (star) {
      r = router.resolve(star->primary, star->secondary);
      why = std::string("routing.static, the default route \"*\" (") +
            (domain.empty() ? "no domain in the address" : "no entry for domain \"" + domain + "\"") + ")";
    }
  }
  if (!r.primary) {
    std::printf("route: none: %s and no default route \"*\"\n",
                domain.empty() ? "no domain in the address"
                               : ("no routing.static entry for domain \"" + domain + "\"").c_str());
    return false;
  }
  std::printf("route: %s\n", why.c_str());
  std::printf("primary: %s\n", describeBackend(r.primary).c_str());
  if (r.secondary)
    std::printf("secondary: %s\n", describeBackend(r.secondary).c_str());
  else
    std::printf("secondary: none\n");
  std::printf("failover order: %s%s\n", r.primary->config->name.c_str(),
              r.secondary ? (", " + r.secondary->config->name).c_str() : "");
  std::printf("health: not probed (an offline look-up; the running gateway's /status shows it)\n");
  return true;
}

std::string readPassword(bool* ok) {
  *ok = true;
  std::string pw;
  if (::isatty(STDIN_FILENO)) {
    termios old {};
    const bool term = ::tcgetattr(STDIN_FILENO, &old) == 0;
    if (term) {
      termios quiet = old;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    std::fputs("Password: ", stderr);
    std::fflush(stderr);
    if (!std::getline(std::cin, pw)) *ok = false;
    if (term) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    std::fputs("\n", stderr);
  } else if (!std::getline(std::cin, pw)) {
    *ok = false;
  }
  if (!pw.empty() && pw.back() == '\r') pw.pop_back();
  return pw;
}

}  // namespace

int checkConfigMain(const std::string& path) {
  quietLog(log::Level::kError);
  auto r = conf::loadConfigFile(path);
  std::vector<conf::ConfigError> errors = r.errors;
  if (r.partial) checkCertificates(*r.partial, &errors);
  if (errors.empty()) {
    // Compile what the loader does not check alone (passwd-file, policy, stores).
    auto rt = session::Runtime::build(r.config);
    if (!rt) errors.push_back({path, 0, 0, rt.error()});
  }
  if (!errors.empty()) {
    std::stable_sort(errors.begin(), errors.end(), [](const conf::ConfigError& a, const conf::ConfigError& b) {
      return a.line != b.line ? (a.line != 0 && (b.line == 0 || a.line < b.line)) : a.column < b.column;
    });
    for (const auto& e : errors) std::printf("%s\n", e.format().c_str());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

int dumpConfigMain(const std::string& path) {
  conf::LoadResult r;
  if (!loadFor(path, &r)) return 1;
  std::fputs(conf::dumpConfig(*r.config).c_str(), stdout);
  return 0;
}

int authTestMain(const std::string& path, const std::string& user, const std::string& listener) {
  quietLog(log::Level::kWarn);
  conf::LoadResult r;
  if (!loadFor(path, &r)) return 3;
  const conf::ListenerConfig* l = pickListener(*r.config, false);
  if (!listener.empty()) {
    l = nullptr;
    std::string names;
    for (const auto& x : r.config->listeners) {
      if (x.name == listener) l = &x;
      names += (names.empty() ? "" : ", ") + x.name;
    }
    if (!l) {
      std::fprintf(stderr, "mailgate: --listener: no listener \"%s\" (defined: %s)\n", listener.c_str(),
                   names.c_str());
      return 2;
    }
  }
  bool have = false;
  const std::string password = readPassword(&have);
  if (!have) {
    std::fprintf(stderr, "mailgate: --auth-test: no password given (one line on standard input)\n");
    return 2;
  }
  auto rt = session::Runtime::build(r.config);
  if (!rt) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), rt.error().c_str());
    return 3;
  }
  filters::SessionFacts facts = factsFor(l, "auth-test");
  facts.user = user;
  facts.route_map = rt.value()->router->mapChangedAt();
  const auth::AuthResult res = rt.value()->directory->authenticate(user, password, facts);
  std::printf("directory: %s; as a login on listener %s from %s\n", r.config->directory.driver.c_str(),
              facts.listener.empty() ? "(none)" : facts.listener.c_str(), facts.client_ip.c_str());
  switch (res.verdict) {
    case auth::Verdict::kOk:
      std::printf("ok: %s\n", res.user.empty() ? user.c_str() : res.user.c_str());
      if (res.backend_user) std::printf("backend user: %s\n", res.backend_user->c_str());
      if (res.route) {
        std::printf("route: from the directory: primary %s, secondary %s\n", res.route->primary.c_str(),
                    res.route->secondary.empty() ? "none" : res.route->secondary.c_str());
      } else {
        printRoute(*rt.value(), res.user.empty() ? user : res.user);
      }
      return 0;
    case auth::Verdict::kBadPassword:
      std::printf("failed: wrong password%s%s\n", res.reason.empty() ? "" : ": ", res.reason.c_str());
      return 1;
    case auth::Verdict::kUnknownUser:
      std::printf("failed: unknown user%s%s\n", res.reason.empty() ? "" : ": ", res.reason.c_str());
      return 1;
    case auth::Verdict::kTempFail:
      break;
  }
  std::printf("temporary failure: %s\n", res.reason.empty() ? "the directory is unavailable" : res.reason.c_str());
  return 3;
}

int routeMain(const std::string& path, const std::string& address) {
  quietLog(log::Level::kWarn);
  conf::LoadResult r;
  if (!loadFor(path, &r)) return 3;
  auto rt = session::Runtime::build(r.config);
  if (!rt) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), rt.error().c_str());
    return 3;
  }
  session::Runtime& runtime = *rt.value();
  std::printf("address: %s\n", address.c_str());
  if (r.config->directory.driver == "postgres") {
    auto table = auth::PostgresRouteWatcher::loadOnce(r.config->directory);
    if (table) {
      runtime.router->setTable(table.value());
      std::printf("routing map: %zu entries from the database\n", table.value()->entries.size());
    } else {
      std::printf("routing map: not loaded (%s): routing.static applies\n", table.error().c_str());
    }
  }
  std::string route_by = address;
  if (address.find('@') != std::string::npos) {
    filters::SessionFacts facts = factsFor(pickListener(*r.config, true), "route");
    facts.rcpt = address;
    const auth::RecipientAnswer ans = runtime.directory->lookupRecipient(address, facts);
    switch (ans.result) {
      case auth::RecipientResult::kLocal:
        if (!ans.mailbox.empty() && !ascii::iequals(ans.mailbox, address)) {
          std::printf("directory: an alias of %s (routed as that mailbox)\n", ans.mailbox.c_str());
          route_by = ans.mailbox;
        } else {
          std::printf("directory: a local mailbox\n");
        }
        break;
      case auth::RecipientResult::kUnknownMailbox:
        std::printf("directory: no such mailbox in a local domain (the MX refuses it: 550 5.1.1)\n");
        break;
      case auth::RecipientResult::kForeignDomain:
        std::printf("directory: not a local domain (the MX refuses it: 550 5.7.1)\n");
        break;
      case auth::RecipientResult::kTempFail:
        std::printf("directory: cannot tell (unavailable, or the %s driver does not check recipients)\n",
                    r.config->directory.driver.c_str());
        break;
    }
  }
  return printRoute(runtime, route_by) ? 0 : 1;
}

}  // namespace mailgate::admin
