#pragma once
// The typed configuration. yaml-cpp never leaks past conf/: the loader turns the
// YAML tree into these structs, with every default here, in one place.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/policy_config.h"

namespace mailgate::conf {

using Duration = std::chrono::milliseconds;

enum class Protocol { kImap, kPop3, kSmtp, kSubmission };
enum class TlsMode { kNone, kStarttls, kImplicit };
enum class LogFormat { kJson, kText };
enum class LogLevel { kDebug, kInfo, kWarn, kError };
// The reactor's I/O layer: io_uring where the kernel allows it, epoll otherwise.
enum class IoBackend { kAuto, kIoUring, kEpoll };

struct ServerConfig {
  unsigned threads = 0;  // 0 = auto (one per online CPU)
  Duration shutdown_grace{30000};
  unsigned workers = 2;          // directory executor threads (libpq, password hashing, DNS)
  unsigned content_workers = 2;  // executor threads for blocking content work (never the directory's)
  // SMTP messages: kept in memory up to spool_memory octets each, beyond that in an
  // anonymous temporary file in spool_dir.
  std::string spool_dir = "/var/tmp";
  uint32_t spool_memory = 1u << 20;
  // auto: io_uring when io_uring_setup works (not blocked by seccomp or
  // kernel.io_uring_disabled) and has the operations needed, else epoll.
  IoBackend io = IoBackend::kAuto;
  // The name the gateway gives itself (Postfix's myhostname, nginx's server_name): the
  // SMTP greeting, the EHLO reply, Received: fields, ban origins. Empty = gethostname().
  std::string hostname;
  // Privileges: when started as root with a user set, the listeners (and the admin
  // listener) are bound first, then the process switches to this user and group
  // (group empty = the user's primary group). Empty = keep the starting identity.
  std::string user;
  std::string group;
};

struct LogConfig {
  LogLevel level = LogLevel::kInfo;
  LogFormat format = LogFormat::kJson;
  // Empty = standard error (journald under systemd). A path: appended to, reopened on
  // SIGUSR1 (logrotate's postrotate) and on SIGHUP.
  std::string file;
};

struct AdminConfig {
  std::string listen;  // empty = disabled
  // State-changing requests (drain, ban and unban, quarantine release and delete,
  // from the status page, the API or the CLI) need `Authorization: Bearer <token>`,
  // the token being this file's first line. Empty = the admin listener is read-only.
  std::string token_file;
};

struct CertificateConfig {
  std::string cert;  // absolute path (relative paths are resolved against the config file's directory)
  std::string key;
  Position cert_pos;  // where the file was named (the value), for diagnostics
  Position key_pos;
};

struct TlsConfig {
  std::vector<CertificateConfig> certificates;  // first is the default
  std::string min_version = "TLSv1.2";          // TLSv1.2 | TLSv1.3
  std::string ciphers;                           // OpenSSL cipher list for TLS <= 1.2; empty = OpenSSL default
};

struct ListenerConfig {
  std::string name;
  Protocol protocol = Protocol::kImap;
  std::vector<std::string> listen;  // "host:port", "[v6]:port"
  TlsMode tls = TlsMode::kNone;
  bool proxy_protocol = false;
  bool allow_plaintext_auth = false;
  // Pre-authentication bounds (defaults chosen per protocol by the loader when absent).
  Duration preauth_timeout{60000};     // idle time allowed before authentication
  Duration idle_timeout{3600000};      // idle time allowed after authentication (relay)
  uint32_t max_line = 0;               // 0 = protocol default: imap 65536, pop3 512
  uint32_t max_literal = 8192;         // imap: largest literal accepted before authentication
  uint32_t max_bad_commands = 10;      // protocol errors before the session is closed
  uint32_t max_auth_attempts = 3;      // failed logins before the session is closed
  // smtp/submission: message bounds (SIZE is announced as max_message_size).
  uint32_t max_message_size = 50u << 20;  // octets of one message (DATA after unstuffing, BDAT total)
  uint32_t max_recipients = 100;          // RCPT accepted per message (more: 452 4.5.3)
  uint32_t max_messages = 100;            // messages per session (more: 421 4.7.0 and close)
  Duration greeting_delay{0};             // wait before the 220; a client talking first is refused
  // The greeting's text after the code (SMTP "220 <banner>", IMAP "* OK <banner>",
  // POP3 "+OK <banner>"); empty = the protocol's default, naming server.hostname for SMTP.
  std::string banner;
  // submission: may the authenticated user send as any envelope sender? false = only
  // its own addresses and aliases (the directory decides), else 553 5.7.1.
  bool sender_any = false;                // key sender_check: owned (default) | any
  // smtp: where RCPT TO:<Postmaster> (no domain, RFC 5321 §4.5.1) goes; empty = refused.
  std::string postmaster;
  // imap: APPENDLIMIT (RFC 7889) advertised, and a larger APPEND literal refused with
  // NO [TOOBIG] before the node sees it; 0 = none.
  uint64_t append_limit = 0;
  // line/column of the listener in the config file, for later diagnostics
  int line = 0;
  int column = 0;
};

struct FileDirectoryConfig {
  std::string users;            // passwd-file path
  Duration failure_delay{2000};  // delay before a failed-authentication reply
  bool operator==(const FileDirectoryConfig&) const = default;
};

struct CacheConfig {
  Duration ttl{60000};
  Duration negative_ttl{10000};
  bool operator==(const CacheConfig&) const = default;
};

// directory.postgres (the PostgreSQL driver; every query overridable).
struct PostgresQueriesConfig {
  std::string password;  // empty = built-in default query
  std::string recipient;
  std::string domain;  // a row when %{domain} is one of ours (SMTP recipient check)
  std::string sender;  // a row when login %{user} may send as %{address} (submission)
  std::string route;
  std::string routes;
  // Node states for the routing map: rows (name, state active|drain|down). Empty =
  // the default query on the default schema's nodes table when `routes` is the
  // default too; none when `routes` is overridden (legacy schemas without nodes).
  std::string nodes;
  bool operator==(const PostgresQueriesConfig&) const = default;
};

struct PostgresDirectoryConfig {
  std::string conninfo;  // libpq connection string (multi-host allowed)
  uint32_t pool = 8;
  Duration timeout{2000};
  Duration refresh{30000};
  std::string default_scheme = "SHA512-CRYPT";  // for stored hashes without a {SCHEME} prefix
  PostgresQueriesConfig queries;
  bool operator==(const PostgresDirectoryConfig&) const = default;
};

// directory.http: nginx's auth_http protocol, mailgate as the client.
struct HttpDirectoryConfig {
  std::string url;
  Duration timeout{2000};
  bool operator==(const HttpDirectoryConfig&) const = default;
};

struct DirectoryConfig {
  std::string driver = "file";  // file | postgres | http
  FileDirectoryConfig file;
  PostgresDirectoryConfig postgres;
  HttpDirectoryConfig http;
  CacheConfig cache;
  bool operator==(const DirectoryConfig&) const = default;
};

struct BackendPorts {
  uint16_t imap = 0;  // 0 = not offered by this node
  uint16_t pop3 = 0;
  uint16_t smtp = 0;
  uint16_t lmtp = 0;
};

struct HealthConfig {
  Duration interval{5000};
  Duration timeout{2000};
};

struct BackendConfig {
  std::string name;
  std::string host;
  BackendPorts ports;
  TlsMode tls = TlsMode::kNone;
  std::string tls_ca;         // CA file used to verify the node; empty = system store
  bool tls_verify = true;     // verify the node's certificate and name
  std::string tls_name;       // name to verify; empty = host
  std::string login = "replay";  // replay | master
  // login: master — the node is logged in to as this master user, on behalf of the
  // user (SASL PLAIN authorization identity); its password is read from the file at
  // start and on reload (Runtime), never kept in the config text.
  std::string master_user;
  std::string master_password_file;
  std::string deliver = "lmtp";  // lmtp | smtp
  HealthConfig health;
  Duration connect_timeout{5000};
};

struct RouteConfig {
  std::string domain;     // "*" = default route
  std::string primary;    // backend name
  std::string secondary;  // backend name or empty
};

struct RoutingConfig {
  std::vector<RouteConfig> static_routes;  // YAML key: routing.static
  std::string submission_relay;
};

// hooks: content scanners and the flows that run them (SMTP data stage).
enum class HookAction { kAccept, kTempfail, kReject };
enum class OversizeAction { kAcceptUnscanned, kTempfail, kReject };

// icap: what a message the ICAP server modified (200 with a new body) means.
enum class ModifiedAction { kAccept, kReject, kIgnore };
// dlp: what a match does.
enum class DlpAction { kReject, kQuarantine, kTag };

struct DlpDetectorConfig {
  std::string id;
  // A built-in pattern ("card_number", "iban") or an RE2 pattern of one's own.
  std::string pattern;
  std::string validate;                // "" | "luhn" | "iban_mod97"
  std::vector<std::string> context;    // words that must be near a match (any one; case-insensitive)
  uint32_t context_window = 100;       // octets before and after a match searched for them
  uint32_t min_count = 1;              // matches needed
  int line = 0, column = 0;
};

struct ScannerConfig {
  std::string name;
  std::string type = "clamd";          // clamd | icap | milter | dlp
  std::vector<std::string> endpoints;  // clamd, milter: "unix:/path" | "tcp:HOST:PORT", tried in order
  uint64_t stream_max = 25ull << 20;   // clamd: its StreamMaxLength (a longer message is oversize, not sent)
  std::optional<HookAction> on_error;  // unset = hooks.defaults.on_error
  // Per-scanner overrides of hooks.defaults (unset = the default).
  std::optional<Duration> connect_timeout;
  std::optional<Duration> scan_timeout;
  std::optional<uint64_t> max_size;
  std::optional<OversizeAction> on_oversize;
  // Circuit breaker: after `breaker_failures` failures in a row the scanner is skipped
  // (its on_error applies at once) for `breaker_open`, then tried again.
  uint32_t breaker_failures = 5;
  Duration breaker_open{30000};
  // icap
  std::string url;                     // icap://HOST[:PORT]/SERVICE (numeric host)
  std::string method = "respmod";      // respmod | reqmod
  ModifiedAction on_modified = ModifiedAction::kAccept;
  // dlp
  std::vector<DlpDetectorConfig> detectors;
  DlpAction on_match = DlpAction::kQuarantine;
  std::string tag_header;              // on_match: tag: "Name: value" (default X-Mailgate-DLP: <ids>)
  int line = 0, column = 0;
};

struct FlowConfig {
  std::vector<std::string> listeners;  // when.listener; empty = every listener
  std::optional<bool> authenticated;   // when.authenticated; unset = either
  std::vector<std::string> run;        // scanner names, in order
};

// hooks.quarantine: where quarantined messages are held (accepted: 250 once durable).
struct QuarantineConfig {
  std::string store;              // "" = none | dir | postgres (needs directory.driver postgres)
  std::string dir;                // store: dir (absolute once loaded)
  Duration retention{30LL * 86400000};  // entries older than this are deleted
};

struct HooksConfig {
  HookAction on_error = HookAction::kTempfail;  // a scanner down, failing or too slow
  Duration connect_timeout{5000};               // defaults.timeouts.connect (each endpoint)
  Duration scan_timeout{60000};                 // defaults.timeouts.scan (the whole scan, connects included)
  uint64_t max_size = 50ull << 20;              // larger messages are not scanned
  OversizeAction on_oversize = OversizeAction::kAcceptUnscanned;
  std::vector<ScannerConfig> scanners;
  std::vector<FlowConfig> flows;
  QuarantineConfig quarantine;

  const ScannerConfig* findScanner(const std::string& name) const {
    for (const auto& sc : scanners)
      if (sc.name == name) return &sc;
    return nullptr;
  }
};

// The exception queue: recipients a node deferred (or refused) after the data while
// others were delivered. The message is stored once, durably, and retried by any
// gateway sharing the store; the client got 250 with the queue id.
struct QueueConfig {
  // none | dir | postgres. Without a `queue` section: postgres with the postgres
  // directory, else none (a partly deferred message is then answered 451).
  std::string store = "none";
  std::string dir;                               // store: dir (absolute once loaded)
  uint64_t max_entries = 10000;                  // a full queue: 451 at the end of data
  uint64_t max_size = 1ull << 30;                // octets of queued messages, likewise
  Duration retry{60000};                         // the first retry; each one after doubles
  Duration max_retry{3600000};                   // up to this
  Duration lifetime{5LL * 86400000};             // then the sender gets a DSN
  Duration lease{1800000};                       // a claimed entry is its gateway's this long (> one delivery)
  Duration scan_interval{1000};                  // how often due entries are looked for
  bool operator==(const QueueConfig&) const = default;
};

struct Config {
  std::string path;  // the file this was loaded from
  ServerConfig server;
  LogConfig log;
  AdminConfig admin;
  TlsConfig tls;
  std::vector<ListenerConfig> listeners;
  DirectoryConfig directory;
  std::vector<BackendConfig> backends;
  RoutingConfig routing;
  HooksConfig hooks;
  QueueConfig queue;
  PolicyConfig policy;  // lists, geoip, limits, policies

  const BackendConfig* findBackend(const std::string& name) const {
    for (const auto& b : backends)
      if (b.name == name) return &b;
    return nullptr;
  }
};

struct ConfigError {
  std::string file;
  int line = 0;    // 1-based; 0 = unknown
  int column = 0;  // 1-based; 0 = unknown
  std::string message;
  std::string format() const;  // "FILE:LINE:COL: message"
};

struct LoadResult {
  std::shared_ptr<const Config> config;  // null when errors is not empty
  std::vector<ConfigError> errors;
  // What could be loaded despite the errors (null when the text could not be read or
  // parsed): --check-config checks its certificates too, to report every problem.
  std::shared_ptr<const Config> partial;
};

// Loads and validates the file. Collects every problem it can find.
LoadResult loadConfigFile(const std::string& path);
// Same, from text (path used in messages and to resolve relative file names).
LoadResult loadConfigText(const std::string& text, const std::string& path);

// Parses "250ms", "30s", "5m", "1h", "2d" (and a bare number = seconds). false on error.
bool parseDuration(const std::string& text, Duration* out);
// Parses "512", "64K", "50M", "1G". false on error or overflow.
bool parseSize(const std::string& text, uint64_t* out);

// A listen address split into its parts: "IPv4:port", "[IPv6]:port", "*:port" (numeric only).
struct ListenAddress {
  std::string host;  // IPv4 literal, IPv6 literal (without brackets), or empty for "*"
  uint16_t port = 0;
  bool any() const { return host.empty(); }
};
// Parses a listen address; on failure returns false and says why in *error (when not null).
bool parseListenAddress(const std::string& text, ListenAddress* out, std::string* error);

// The address of an outside service: "unix:/path", "tcp:IPv4:port", "tcp:[IPv6]:port"
// (numeric hosts only).
struct ServiceEndpoint {
  bool unix_socket = false;
  std::string path;  // unix_socket
  std::string host;  // IPv4 or IPv6 literal (without brackets)
  uint16_t port = 0;
};
bool parseServiceEndpoint(std::string_view text, ServiceEndpoint* out, std::string* error);

}  // namespace mailgate::conf
