// The effective configuration as YAML (conf/dump.h). Every value is written in the
// form the loader reads; a value that is empty (not set) is written as a comment
// that says what applies instead, since the loader refuses most empty strings.
#include "conf/dump.h"

#include <cstdio>
#include <string>
#include <vector>

namespace mailgate::conf {
namespace {

// A YAML double-quoted scalar.
std::string q(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + q(items[i]);
  return out + "]";
}

const char* b(bool v) { return v ? "true" : "false"; }

const char* tlsMode(TlsMode m) {
  switch (m) {
    case TlsMode::kNone: return "none";
    case TlsMode::kStarttls: return "starttls";
    case TlsMode::kImplicit: return "implicit";
  }
  return "none";
}

const char* protocol(Protocol p) {
  switch (p) {
    case Protocol::kImap: return "imap";
    case Protocol::kPop3: return "pop3";
    case Protocol::kSmtp: return "smtp";
    case Protocol::kSubmission: return "submission";
  }
  return "imap";
}

const char* hookAction(HookAction a) {
  switch (a) {
    case HookAction::kAccept: return "accept";
    case HookAction::kTempfail: return "tempfail";
    case HookAction::kReject: return "reject";
  }
  return "tempfail";
}

const char* oversize(OversizeAction a) {
  switch (a) {
    case OversizeAction::kAcceptUnscanned: return "accept_unscanned";
    case OversizeAction::kTempfail: return "tempfail";
    case OversizeAction::kReject: return "reject";
  }
  return "accept_unscanned";
}

const char* limitAction(LimitAction a) {
  switch (a) {
    case LimitAction::kTempfail: return "tempfail";
    case LimitAction::kReject: return "reject";
    case LimitAction::kDelay: return "delay";
    case LimitAction::kBan: return "ban";
  }
  return "tempfail";
}

const char* countKind(CountKind k) {
  switch (k) {
    case CountKind::kConnections: return "connections";
    case CountKind::kAuthFailures: return "auth_failures";
    case CountKind::kErrors: return "errors";
    case CountKind::kMessages: return "messages";
    case CountKind::kRecipients: return "recipients";
    case CountKind::kBytes: return "bytes";
  }
  return "connections";
}

const char* keyPart(KeyPart k) {
  switch (k) {
    case KeyPart::kClientNet: return "client.net";
    case KeyPart::kClientIp: return "client.ip";
    case KeyPart::kListener: return "listener";
    case KeyPart::kUser: return "user";
    case KeyPart::kSenderDomain: return "sender.domain";
    case KeyPart::kRcptDomain: return "rcpt.domain";
  }
  return "client.net";
}

const char* policyAction(PolicyAction a) {
  switch (a) {
    case PolicyAction::kAccept: return "accept";
    case PolicyAction::kReject: return "reject";
    case PolicyAction::kTempfail: return "tempfail";
    case PolicyAction::kDelay: return "delay";
    case PolicyAction::kTag: return "tag";
    case PolicyAction::kQuarantine: return "quarantine";
  }
  return "reject";
}

// Writes "key: value" lines at an indentation; an empty optional value becomes a comment.
class Out {
 public:
  void line(int indent, const std::string& text) { text_ += std::string(static_cast<size_t>(indent), ' ') + text + "\n"; }
  void kv(int indent, const std::string& key, const std::string& value) { line(indent, key + ": " + value); }
  // A string that may be empty: quoted when set, else a comment naming what applies.
  void opt(int indent, const std::string& key, const std::string& value, const std::string& unset) {
    if (value.empty())
      line(indent, "# " + key + ": not set (" + unset + ")");
    else
      kv(indent, key, q(value));
  }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

std::string patterns(const std::vector<std::string>& p) { return "{ re2: " + list(p) + " }"; }

std::string match(const Match& m) {
  std::vector<std::string> parts;
  if (!m.listeners.empty()) parts.push_back("listener: " + list(m.listeners));
  if (!m.protocols.empty()) parts.push_back("protocol: " + list(m.protocols));
  if (!m.client_net_in.empty()) parts.push_back("client.net: { in: " + list(m.client_net_in) + " }");
  if (!m.country_lists.empty())
    parts.push_back("country: { in: " + list(m.country_lists) + " }");
  else if (!m.country_in.empty())
    parts.push_back("country: " + list(m.country_in));
  if (!m.asn.empty()) {
    std::string a = "asn: [";
    for (size_t i = 0; i < m.asn.size(); ++i) a += (i ? ", " : "") + std::to_string(m.asn[i]);
    parts.push_back(a + "]");
  }
  if (m.tls) parts.push_back(std::string("tls: ") + b(*m.tls));
  if (m.authenticated) parts.push_back(std::string("authenticated: ") + b(*m.authenticated));
  if (!m.users.empty()) parts.push_back("user: " + list(m.users));
  if (!m.helo_re2.empty()) parts.push_back("helo: " + patterns(m.helo_re2));
  if (!m.sender_re2.empty()) parts.push_back("sender: " + patterns(m.sender_re2));
  if (!m.rcpt_re2.empty()) parts.push_back("rcpt: " + patterns(m.rcpt_re2));
  if (!m.header_re2.empty()) parts.push_back("header: " + patterns(m.header_re2));
  if (!m.attachment_re2.empty()) parts.push_back("attachment.filename: " + patterns(m.attachment_re2));
  if (m.negated && !m.negated->empty()) parts.push_back("not: " + match(*m.negated));
  std::string out = "{";
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? ", " : " ") + parts[i];
  return out + (parts.empty() ? "}" : " }");
}

void server(Out& o, const ServerConfig& s) {
  o.line(0, "server:");
  o.kv(2, "threads", s.threads ? std::to_string(s.threads) : "auto");
  o.kv(2, "io", s.io == IoBackend::kAuto ? "auto" : s.io == IoBackend::kIoUring ? "io_uring" : "epoll");
  o.kv(2, "workers", std::to_string(s.workers));
  o.kv(2, "content_workers", std::to_string(s.content_workers));
  o.kv(2, "shutdown_grace", formatDuration(s.shutdown_grace));
  o.kv(2, "spool_dir", q(s.spool_dir));
  o.kv(2, "spool_memory", formatSize(s.spool_memory));
  o.opt(2, "hostname", s.hostname, "the system's host name");
  o.opt(2, "user", s.user, "the starting user is kept");
  o.opt(2, "group", s.group, s.user.empty() ? "the starting group is kept" : "the user's primary group");
}

void logSection(Out& o, const LogConfig& l) {
  o.line(0, "log:");
  const char* level = l.level == LogLevel::kDebug  ? "debug"
                      : l.level == LogLevel::kInfo ? "info"
                      : l.level == LogLevel::kWarn ? "warn"
                                                   : "error";
  o.kv(2, "level", level);
  o.kv(2, "format", l.format == LogFormat::kJson ? "json" : "text");
  o.opt(2, "file", l.file, "standard error");
}

void admin(Out& o, const AdminConfig& a) {
  o.line(0, "admin:");
  o.opt(2, "listen", a.listen, "no admin listener");
  o.opt(2, "token_file", a.token_file, "the admin listener is read-only");
}

void tls(Out& o, const TlsConfig& t) {
  o.line(0, "tls:");
  if (t.certificates.empty()) o.line(2, "# certificates: none");
  else o.line(2, "certificates:");
  for (const auto& c : t.certificates) o.line(4, "- { cert: " + q(c.cert) + ", key: " + q(c.key) + " }");
  o.kv(2, "min_version", t.min_version);
  o.opt(2, "ciphers", t.ciphers, "OpenSSL's default list");
}

void listeners(Out& o, const std::vector<ListenerConfig>& ls) {
  o.line(0, "listeners:");
  for (const auto& l : ls) {
    const bool smtp = l.protocol == Protocol::kSmtp || l.protocol == Protocol::kSubmission;
    o.kv(2, "- name", q(l.name));
    o.kv(4, "protocol", protocol(l.protocol));
    o.kv(4, "listen", list(l.listen));
    o.kv(4, "tls", tlsMode(l.tls));
    o.kv(4, "proxy_protocol", b(l.proxy_protocol));
    o.kv(4, "allow_plaintext_auth", b(l.allow_plaintext_auth));
    o.kv(4, "preauth_timeout", formatDuration(l.preauth_timeout));
    o.kv(4, "idle_timeout", formatDuration(l.idle_timeout));
    o.kv(4, "max_line", std::to_string(l.max_line));
    o.kv(4, "max_literal", std::to_string(l.max_literal));
    o.kv(4, "max_bad_commands", std::to_string(l.max_bad_commands));
    o.kv(4, "max_auth_attempts", std::to_string(l.max_auth_attempts));
    o.kv(4, "max_message_size", formatSize(l.max_message_size));
    o.kv(4, "max_recipients", std::to_string(l.max_recipients));
    o.kv(4, "max_messages", std::to_string(l.max_messages));
    o.kv(4, "greeting_delay", formatDuration(l.greeting_delay));
    o.opt(4, "banner", l.banner, smtp ? "the protocol's greeting, naming server.hostname" : "the protocol's greeting");
    if (l.protocol == Protocol::kSubmission) o.kv(4, "sender_check", l.sender_any ? "any" : "owned");
    if (l.protocol == Protocol::kSmtp) o.opt(4, "postmaster", l.postmaster, "RCPT TO:<Postmaster> is refused");
    if (l.protocol == Protocol::kImap) o.kv(4, "append_limit", l.append_limit ? formatSize(l.append_limit) : "0");
  }
}

void directory(Out& o, const DirectoryConfig& d) {
  o.line(0, "directory:");
  o.kv(2, "driver", d.driver);
  if (!d.file.users.empty()) {
    o.line(2, "file:");
    o.kv(4, "users", q(d.file.users));
    o.kv(4, "failure_delay", formatDuration(d.file.failure_delay));
  }
  if (d.driver == "postgres" || !d.postgres.conninfo.empty()) {
    const auto& p = d.postgres;
    o.line(2, "postgres:");
    o.kv(4, "conninfo", q(p.conninfo));
    o.kv(4, "pool", std::to_string(p.pool));
    o.kv(4, "timeout", formatDuration(p.timeout));
    o.kv(4, "refresh", formatDuration(p.refresh));
    o.kv(4, "default_scheme", q(p.default_scheme));
    o.line(4, "queries:");
    const std::string builtin = "the built-in query";
    o.opt(6, "password", p.queries.password, builtin);
    o.opt(6, "recipient", p.queries.recipient, builtin);
    o.opt(6, "domain", p.queries.domain, builtin);
    o.opt(6, "sender", p.queries.sender, builtin);
    o.opt(6, "route", p.queries.route, builtin);
    o.opt(6, "routes", p.queries.routes, builtin);
    o.opt(6, "nodes", p.queries.nodes, p.queries.routes.empty() ? builtin : "none: routes is overridden");
  }
  if (d.driver == "http" || !d.http.url.empty()) {
    o.line(2, "http:");
    o.kv(4, "url", q(d.http.url));
    o.kv(4, "timeout", formatDuration(d.http.timeout));
  }
  o.line(2, "cache:");
  o.kv(4, "ttl", formatDuration(d.cache.ttl));
  o.kv(4, "negative_ttl", formatDuration(d.cache.negative_ttl));
}

void backends(Out& o, const std::vector<BackendConfig>& bs) {
  if (bs.empty()) {
    o.line(0, "# backends: none");
    return;
  }
  o.line(0, "backends:");
  for (const auto& be : bs) {
    o.kv(2, "- name", q(be.name));
    o.kv(4, "host", q(be.host));
    std::vector<std::string> ports;
    if (be.ports.imap) ports.push_back("imap: " + std::to_string(be.ports.imap));
    if (be.ports.pop3) ports.push_back("pop3: " + std::to_string(be.ports.pop3));
    if (be.ports.smtp) ports.push_back("smtp: " + std::to_string(be.ports.smtp));
    if (be.ports.lmtp) ports.push_back("lmtp: " + std::to_string(be.ports.lmtp));
    std::string p = "{";
    for (size_t i = 0; i < ports.size(); ++i) p += (i ? ", " : " ") + ports[i];
    o.kv(4, "ports", p + (ports.empty() ? "}" : " }"));
    o.kv(4, "tls", tlsMode(be.tls));
    o.opt(4, "tls_ca", be.tls_ca, "the system's CA store");
    o.kv(4, "tls_verify", b(be.tls_verify));
    o.opt(4, "tls_name", be.tls_name, "host");
    o.kv(4, "login", be.login);
    if (be.login == "master") {
      o.kv(4, "master_user", q(be.master_user));
      o.kv(4, "master_password_file", q(be.master_password_file));
    }
    o.kv(4, "deliver", be.deliver);
    o.kv(4, "health", "{ interval: " + formatDuration(be.health.interval) +
                          ", timeout: " + formatDuration(be.health.timeout) + " }");
    o.kv(4, "connect_timeout", formatDuration(be.connect_timeout));
  }
}

void routing(Out& o, const RoutingConfig& r) {
  o.line(0, "routing:");
  if (r.static_routes.empty()) o.line(2, "# static: none");
  else o.line(2, "static:");
  for (const auto& s : r.static_routes)
    o.line(4, "- { domain: " + q(s.domain) + ", primary: " + q(s.primary) +
                  (s.secondary.empty() ? "" : ", secondary: " + q(s.secondary)) + " }");
  o.opt(2, "submission_relay", r.submission_relay, "submission is delivered by the user's route");
}

void lists(Out& o, const std::vector<ListConfig>& ls) {
  if (ls.empty()) {
    o.line(0, "# lists: none");
    return;
  }
  o.line(0, "lists:");
  for (const auto& l : ls) {
    o.line(2, q(l.name) + ":");
    if (!l.countries.empty()) o.kv(4, "countries", list(l.countries));
    if (!l.cidrs.empty()) o.kv(4, "cidrs", list(l.cidrs));
    if (!l.file.empty()) o.kv(4, "file", q(l.file));
  }
}

void geoip(Out& o, const GeoipConfig& g) {
  if (!g.country.configured() && !g.asn.configured()) {
    o.line(0, "# geoip: none (country and asn conditions are not available)");
    return;
  }
  o.line(0, "geoip:");
  if (g.country.configured()) o.kv(2, "country", "{ mmdb: " + list(g.country.mmdb) + ", field: " + q(g.country.field) + " }");
  if (g.asn.configured()) o.kv(2, "asn", "{ mmdb: " + list(g.asn.mmdb) + ", field: " + q(g.asn.field) + " }");
}

void limits(Out& o, const LimitsConfig& l) {
  o.line(0, "limits:");
  o.line(2, "defaults:");
  o.kv(4, "ipv4_prefix", std::to_string(l.ipv4_prefix));
  o.kv(4, "ipv6_prefix", std::to_string(l.ipv6_prefix));
  if (l.exempt.empty()) o.line(4, "# exempt: none");
  else o.kv(4, "exempt", list(l.exempt));
  o.kv(4, "max_keys", std::to_string(l.max_keys));
  bool builtin = !l.rules.empty();
  for (const auto& r : l.rules) builtin = builtin && r.builtin;
  if (builtin) o.line(2, "# the built-in rules (limits.rules not given):");
  if (l.rules.empty()) o.line(2, "rules: []");
  else o.line(2, "rules:");
  for (const auto& r : l.rules) {
    o.kv(4, "- name", q(r.name));
    o.kv(6, "count", countKind(r.count));
    std::vector<std::string> key;
    for (KeyPart k : r.key) key.push_back(keyPart(k));
    o.kv(6, "key", list(key));
    if (!r.when.empty()) o.kv(6, "when", match(r.when));
    if (r.concurrency) o.kv(6, "concurrency", std::to_string(r.concurrency));
    if (r.rate) {
      o.kv(6, "rate", q(std::to_string(r.rate) + "/" + formatDuration(r.per)));
      o.kv(6, "burst", std::to_string(r.burst ? r.burst : r.rate));
    }
    if (r.count == CountKind::kAuthFailures) o.kv(6, "distinct_credentials", b(r.distinct_credentials));
    std::string on = std::string("{ action: ") + limitAction(r.on_exceed);
    if (r.on_exceed == LimitAction::kDelay)
      on += ", delay: " + q(formatDuration(r.delay_min) + ".." + formatDuration(r.delay_max));
    if (!r.reply.empty()) on += ", reply: " + q(r.reply);
    o.kv(6, "on_exceed", on + " }");
    o.kv(6, "scope", r.cluster ? "cluster" : "node");
  }
  o.line(2, "bans:");
  o.kv(4, "ttl", formatDuration(l.bans.ttl));
  char factor[32];
  std::snprintf(factor, sizeof factor, "%g", l.bans.factor);
  o.kv(4, "increment", std::string("{ factor: ") + factor + ", max: " + formatDuration(l.bans.max) + " }");
  o.kv(4, "forget", formatDuration(l.bans.forget));
  if (l.bans.never.empty()) o.line(4, "# never: none");
  else o.kv(4, "never", list(l.bans.never));
  if (l.early_talker.listeners.empty()) {
    o.line(2, "# early_talker: none");
  } else {
    o.line(2, "early_talker:");
    o.kv(4, "listeners", list(l.early_talker.listeners));
    o.kv(4, "greet_wait", formatDuration(l.early_talker.greet_wait));
    o.kv(4, "action", limitAction(l.early_talker.action));
  }
  o.kv(2, "line_timeout", formatDuration(l.line_timeout));
  o.kv(2, "user_sessions", std::to_string(l.max_user_sessions));
}

void policies(Out& o, const std::vector<PolicyRuleConfig>& ps) {
  if (ps.empty()) {
    o.line(0, "# policies: none");
    return;
  }
  o.line(0, "policies:");
  for (const auto& p : ps) {
    o.kv(2, "- name", q(p.name));
    o.kv(4, "stage", p.stage);
    if (!p.when.empty()) o.kv(4, "when", match(p.when));
    o.kv(4, "then", policyAction(p.then));
    if (!p.reply.empty()) o.kv(4, "reply", q(p.reply));
    if (p.then == PolicyAction::kDelay) o.kv(4, "delay", formatDuration(p.delay));
    if (p.then == PolicyAction::kTag) o.kv(4, "header", q(p.header));
    o.kv(4, "mode", p.shadow ? "shadow" : "enforce");
  }
}

void scanner(Out& o, const ScannerConfig& sc) {
  o.line(4, q(sc.name) + ":");
  o.kv(6, "type", sc.type);
  if (sc.on_error) o.kv(6, "on_error", hookAction(*sc.on_error));
  if (sc.connect_timeout || sc.scan_timeout) {
    std::string t = "{";
    if (sc.connect_timeout) t += " connect: " + formatDuration(*sc.connect_timeout);
    if (sc.scan_timeout) t += std::string(sc.connect_timeout ? "," : "") + " scan: " + formatDuration(*sc.scan_timeout);
    o.kv(6, "timeouts", t + " }");
  }
  if (sc.max_size) o.kv(6, "max_size", formatSize(*sc.max_size));
  if (sc.on_oversize) o.kv(6, "on_oversize", oversize(*sc.on_oversize));
  o.kv(6, "breaker", "{ failures: " + std::to_string(sc.breaker_failures) +
                         ", open: " + formatDuration(sc.breaker_open) + " }");
  if (sc.type == "clamd" || sc.type == "milter") o.kv(6, "endpoints", list(sc.endpoints));
  if (sc.type == "clamd") o.kv(6, "stream_max", formatSize(sc.stream_max));
  if (sc.type == "icap") {
    o.kv(6, "url", q(sc.url));
    o.kv(6, "method", sc.method);
    o.kv(6, "on_modified", sc.on_modified == ModifiedAction::kAccept   ? "accept"
                           : sc.on_modified == ModifiedAction::kReject ? "reject"
                                                                       : "ignore");
  }
  if (sc.type == "dlp") {
    o.line(6, "detectors:");
    for (const auto& d : sc.detectors) {
      std::string t = "- { id: " + q(d.id) + ", pattern: " + q(d.pattern);
      if (!d.validate.empty()) t += ", validate: " + d.validate;
      if (!d.context.empty()) t += ", context: " + list(d.context);
      t += ", context_window: " + std::to_string(d.context_window) + ", min_count: " + std::to_string(d.min_count) + " }";
      o.line(8, t);
    }
    o.kv(6, "on_match", sc.on_match == DlpAction::kReject       ? "reject"
                        : sc.on_match == DlpAction::kQuarantine ? "quarantine"
                                                                : "tag");
    if (sc.on_match == DlpAction::kTag)
      o.opt(6, "tag_header", sc.tag_header, "X-Mailgate-DLP: the detectors' ids");
  }
}

void hooks(Out& o, const HooksConfig& h) {
  o.line(0, "hooks:");
  o.line(2, "defaults:");
  o.kv(4, "on_error", hookAction(h.on_error));
  o.kv(4, "timeouts", "{ connect: " + formatDuration(h.connect_timeout) + ", scan: " + formatDuration(h.scan_timeout) + " }");
  o.kv(4, "max_size", formatSize(h.max_size));
  o.kv(4, "on_oversize", oversize(h.on_oversize));
  if (h.scanners.empty()) {
    o.line(2, "# scanners: none");
  } else {
    o.line(2, "scanners:");
    for (const auto& sc : h.scanners) scanner(o, sc);
  }
  if (h.flows.empty()) {
    o.line(2, "# flows: none");
  } else {
    o.line(2, "flows:");
    for (const auto& f : h.flows) {
      std::vector<std::string> when;
      if (!f.listeners.empty()) when.push_back("listener: " + list(f.listeners));
      if (f.authenticated) when.push_back(std::string("authenticated: ") + b(*f.authenticated));
      std::string w;
      for (size_t i = 0; i < when.size(); ++i) w += (i ? ", " : "") + when[i];
      o.line(4, "- { " + (w.empty() ? std::string() : "when: { " + w + " }, ") + "run: " + list(f.run) + " }");
    }
  }
  if (h.quarantine.store.empty()) {
    o.line(2, "# quarantine: none");
  } else {
    o.line(2, "quarantine:");
    o.kv(4, "store", h.quarantine.store);
    if (h.quarantine.store == "dir") o.kv(4, "dir", q(h.quarantine.dir));
    o.kv(4, "retention", formatDuration(h.quarantine.retention));
  }
}

void queue(Out& o, const QueueConfig& qc) {
  o.line(0, "queue:");
  o.kv(2, "store", qc.store);
  if (qc.store == "dir") o.kv(2, "dir", q(qc.dir));
  o.kv(2, "max_entries", std::to_string(qc.max_entries));
  o.kv(2, "max_size", formatSize(qc.max_size));
  o.kv(2, "retry", formatDuration(qc.retry));
  o.kv(2, "max_retry", formatDuration(qc.max_retry));
  o.kv(2, "lifetime", formatDuration(qc.lifetime));
  o.kv(2, "lease", formatDuration(qc.lease));
  o.kv(2, "scan_interval", formatDuration(qc.scan_interval));
}

}  // namespace

std::string formatDuration(Duration d) {
  const long long ms = d.count();
  if (ms == 0) return "0s";
  struct Unit {
    long long ms;
    const char* suffix;
  };
  for (Unit u : {Unit{86400000, "d"}, Unit{3600000, "h"}, Unit{60000, "m"}, Unit{1000, "s"}})
    if (ms % u.ms == 0) return std::to_string(ms / u.ms) + u.suffix;
  return std::to_string(ms) + "ms";
}

std::string formatSize(uint64_t v) {
  if (v == 0) return "0";
  struct Unit {
    uint64_t n;
    const char* suffix;
  };
  for (Unit u : {Unit{uint64_t{1} << 30, "G"}, Unit{uint64_t{1} << 20, "M"}, Unit{uint64_t{1} << 10, "K"}})
    if (v % u.n == 0) return std::to_string(v / u.n) + u.suffix;
  return std::to_string(v);
}

std::string dumpConfig(const Config& c) {
  Out o;
  o.line(0, "# mailgate: the effective configuration of " + c.path + ", every default filled in");
  server(o, c.server);
  logSection(o, c.log);
  admin(o, c.admin);
  tls(o, c.tls);
  listeners(o, c.listeners);
  directory(o, c.directory);
  backends(o, c.backends);
  routing(o, c.routing);
  lists(o, c.policy.lists);
  geoip(o, c.policy.geoip);
  limits(o, c.policy.limits);
  policies(o, c.policy.policies);
  hooks(o, c.hooks);
  queue(o, c.queue);
  return o.take();
}

}  // namespace mailgate::conf
