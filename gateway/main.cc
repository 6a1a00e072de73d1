// mailgate: the process. Parses the command line, loads the configuration, starts
// one reactor per thread and the worker pool, and turns signals into reload/stop.
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "auth/postgres_schema.h"
#include "conf/config.h"
#include "filters/circuit_breaker.h"
#include "filters/clamd_filter.h"
#include "filters/dlp.h"
#include "filters/icap_filter.h"
#include "filters/milter_filter.h"
#include "gateway/admin/admin_server.h"
#include "gateway/admin/bans_api.h"
#include "gateway/admin/cli_lookup.h"
#include "gateway/admin/metrics.h"
#include "gateway/admin/policy_cli.h"
#include "filters/policy/policy.h"
#include "filters/policy/policy_state.h"
#include "filters/quarantine.h"
#include "gateway/queue/queue_store.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/core/privileges.h"
#include "gateway/core/sd_notify.h"
#include "gateway/io/listener.h"
#include "gateway/io/worker_pool.h"
#include "gateway/session/filter_chain.h"
#include "gateway/session/listener_changes.h"
#include "gateway/session/reactor.h"
#include "gateway/session/runtime.h"

using namespace mailgate;

namespace {

const char kUsage[] =
    "usage: mailgate --config FILE                    run in the foreground\n"
    "       mailgate --check-config FILE              validate the configuration: ok, or every problem\n"
    "       mailgate --dump-config FILE               print the effective configuration, defaults filled in\n"
    "       mailgate --init-db FILE                   create or migrate the database schema\n"
    "       mailgate --config FILE --auth-test USER [--listener L]\n"
    "                                                 check USER's password (prompted, or a line on stdin)\n"
    "       mailgate --config FILE --route ADDRESS    the node and failover order for ADDRESS, and why\n"
    "       mailgate --config FILE --bans             list the running gateway's bans\n"
    "       mailgate --config FILE --ban NET [--ttl 1h] [--reason TEXT]\n"
    "       mailgate --config FILE --unban NET\n"
    "       mailgate --config FILE --quarantine       list the running gateway's quarantine\n"
    "       mailgate --config FILE --release ID       deliver a quarantined message\n"
    "       mailgate --config FILE --delete ID        delete a quarantined message\n"
    "       mailgate --config FILE --queue            list the running gateway's exception queue\n"
    "       mailgate --config FILE --queue-show ID    one queue entry, its recipients and their states\n"
    "       mailgate --config FILE --queue-retry ID   deliver a queue entry now\n"
    "       mailgate --config FILE --queue-delete ID  delete a queue entry\n"
    "       mailgate --explain FILE --listener L --client IP [--helo H] [--from A] [--rcpt B]...\n"
    "                [--user U] [--message FILE.eml]  what the policy does to a session\n"
    "       mailgate --test-policy FILE CASES.yaml    run policy test cases offline\n"
    "       mailgate --version\n"
    "       mailgate --help\n"
    "Options that take a value also take the form --option=value. See mailgate(8).\n";

// A usage error: the usage on stderr, exit 2.
void usage() { std::fputs(kUsage, stderr); }

void reportErrors(const std::vector<conf::ConfigError>& errors) {
  for (const auto& e : errors) std::fprintf(stderr, "%s\n", e.format().c_str());
}

int initDb(const std::string& path) {
  auto r = conf::loadConfigFile(path);
  if (!r.errors.empty()) {
    reportErrors(r.errors);
    return 1;
  }
  if (r.config->directory.postgres.conninfo.empty()) {
    std::fprintf(stderr, "%s: --init-db needs directory.postgres.conninfo\n", path.c_str());
    return 1;
  }
  auto done = auth::initDatabase(r.config->directory);
  if (!done) {
    std::fprintf(stderr, "mailgate: --init-db: %s\n", done.error().c_str());
    return 1;
  }
  std::printf("%s\n", done.value().c_str());
  return 0;
}

// The ban commands talk to the running gateway's admin endpoint (admin.listen).
struct AdminReply {
  int status = 0;
  std::string body;
};

Result<AdminReply> adminCall(const std::string& path, const std::string& method, const std::string& target,
                             time_t timeout_s = 5) {
  auto r = conf::loadConfigFile(path);
  if (!r.errors.empty()) {
    reportErrors(r.errors);
    return Error{"the configuration has errors"};
  }
  const std::string& listen = r.config->admin.listen;
  if (listen.empty())
    return Error{path +
                 ": admin.listen is not configured: the bans and the quarantine are managed through it"};
  conf::ListenAddress la;
  std::string why;
  if (!conf::parseListenAddress(listen, &la, &why)) return Error{path + ": admin.listen: " + why};
  std::string host = la.host;
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  auto sa = io::resolveAddress(host, la.port);
  if (!sa) return Error{"admin endpoint " + listen + ": " + sa.error()};
  const std::string where = "admin endpoint " + listen;
  int fd = ::socket(sa.value().ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error{where + ": " + std::strerror(errno)};
  timeval tv{timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa.value().ss), sa.value().len) != 0) {
    const int e = errno;
    ::close(fd);
    return Error{where + " unreachable (is mailgate running?): " + std::strerror(e)};
  }
  // A change needs the token of admin.token_file (the gateway is read-only without one).
  std::string auth;
  if (method != "GET" && !r.config->admin.token_file.empty()) {
    auto token = admin::readTokenFile(r.config->admin.token_file);
    if (!token) return Error{path + ": " + token.error()};
    auth = "Authorization: Bearer " + token.value() + "\r\n";
  }
  const std::string req = method + " " + target + " HTTP/1.0\r\nHost: mailgate\r\n" + auth +
                          (method == "GET" ? "" : "Content-Length: 0\r\n") + "\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return Error{where + ": cannot send the request"};
  }
  std::string resp;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
    if (resp.size() > (size_t{64} << 20)) break;
  }
  ::close(fd);
  AdminReply out;
  const size_t sp = resp.find(' ');
  const size_t hdr_end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/", 0) != 0 || sp == std::string::npos || hdr_end == std::string::npos)
    return Error{where + ": no HTTP answer"};
  out.status = std::atoi(resp.c_str() + sp + 1);
  out.body = resp.substr(hdr_end + 4);
  return out;
}

// The "error" member of a JSON error body, or the body itself.
std::string adminError(const AdminReply& r) {
  const std::string key = "{\"error\":\"";
  std::string msg = r.body;
  if (msg.rfind(key, 0) == 0) {
    msg = msg.substr(key.size());
    const size_t end = msg.rfind("\"}");
    if (end != std::string::npos) msg.resize(end);
  }
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
  return "HTTP " + std::to_string(r.status) + ": " + msg;
}

int banCommand(const std::string& path, const std::string& method, const std::string& target, bool print_body) {
  auto r = adminCall(path, method, target);
  if (!r) {
    std::fprintf(stderr, "mailgate: %s\n", r.error().c_str());
    return 1;
  }
  if (r.value().status != 200) {
    std::fprintf(stderr, "mailgate: %s\n", adminError(r.value()).c_str());
    return 1;
  }
  if (print_body) std::fputs(r.value().body.c_str(), stdout);
  return 0;
}

// mailgate --config FILE (--bans | --ban NET [--ttl D] [--reason TEXT] | --unban NET)
int bansCli(const std::string& path, int argc, char** argv) {
  const std::string cmd = argv[3];
  if (cmd == "--bans" && argc == 4) return banCommand(path, "GET", "/bans?format=table", true);
  if (cmd == "--unban" && argc == 5) {
    if (banCommand(path, "DELETE", "/bans?net=" + admin::percentEncode(argv[4]), false) != 0) return 1;
    std::printf("lifted %s\n", argv[4]);
    return 0;
  }
  if (cmd == "--ban" && argc >= 5 && (argc - 5) % 2 == 0) {
    std::string target = "/bans?net=" + admin::percentEncode(argv[4]);
    for (int i = 5; i + 1 < argc; i += 2) {
      const std::string opt = argv[i];
      if (opt == "--ttl") {
        target += "&ttl=" + admin::percentEncode(argv[i + 1]);
      } else if (opt == "--reason") {
        target += "&reason=" + admin::percentEncode(argv[i + 1]);
      } else {
        usage();
        return 2;
      }
    }
    return banCommand(path, "POST", target, true);
  }
  usage();
  return 2;
}

// mailgate --config FILE (--quarantine | --release ID | --delete ID)
int quarantineCli(const std::string& path, int argc, char** argv) {
  const std::string cmd = argv[3];
  if (cmd == "--quarantine" && argc == 4) return banCommand(path, "GET", "/quarantine?format=table", true);
  if (argc != 5) {
    usage();
    return 2;
  }
  const std::string id = argv[4];
  if (!filters::validQuarantineId(id)) {
    std::fprintf(stderr, "mailgate: %s: not a quarantine id (24 hex digits)\n", id.c_str());
    return 1;
  }
  if (cmd == "--delete") {
    if (banCommand(path, "DELETE", "/quarantine/" + id, false) != 0) return 1;
    std::printf("deleted %s\n", id.c_str());
    return 0;
  }
  // A release delivers to the nodes before it answers: give it time.
  auto r = adminCall(path, "POST", "/quarantine/" + id + "/release", 900);
  if (!r) {
    std::fprintf(stderr, "mailgate: %s\n", r.error().c_str());
    return 1;
  }
  if (r.value().status != 200) {
    std::fprintf(stderr, "mailgate: %s\n", adminError(r.value()).c_str());
    return 1;
  }
  std::printf("released %s\n", id.c_str());
  return 0;
}

// mailgate --config FILE (--queue | --queue-show ID | --queue-retry ID | --queue-delete ID)
int queueCli(const std::string& path, int argc, char** argv) {
  const std::string cmd = argv[3];
  if (cmd == "--queue" && argc == 4) return banCommand(path, "GET", "/queue?format=table", true);
  if (cmd == "--queue" || argc != 5) {
    usage();
    return 2;
  }
  const std::string id = argv[4];
  if (!queue::validQueueId(id)) {
    std::fprintf(stderr, "mailgate: %s: not a queue id ([A-Za-z0-9._-], at most 64 characters)\n", id.c_str());
    return 1;
  }
  if (cmd == "--queue-show") return banCommand(path, "GET", "/queue/" + id, true);
  if (cmd == "--queue-retry") {
    if (banCommand(path, "POST", "/queue/" + id + "/retry", false) != 0) return 1;
    std::printf("retrying %s\n", id.c_str());
    return 0;
  }
  if (banCommand(path, "DELETE", "/queue/" + id, false) != 0) return 1;
  std::printf("deleted %s\n", id.c_str());
  return 0;
}

void applyLog(const conf::Config& c) {
  log::setFormat(c.log.format == conf::LogFormat::kJson ? log::Format::kJson : log::Format::kText);
  switch (c.log.level) {
    case conf::LogLevel::kDebug: log::setLevel(log::Level::kDebug); break;
    case conf::LogLevel::kInfo: log::setLevel(log::Level::kInfo); break;
    case conf::LogLevel::kWarn: log::setLevel(log::Level::kWarn); break;
    case conf::LogLevel::kError: log::setLevel(log::Level::kError); break;
  }
}

// The executors, for /metrics (set once in main before the admin listener starts).
std::vector<const io::WorkerPool*> executors;

// After the listeners are bound: server.user/server.group. Returns false when the
// process must not go on (root was asked to switch and could not).
bool dropPrivileges(const conf::ServerConfig& server) {
  if (server.user.empty()) return true;
  auto id = privileges::lookup(server.user, server.group);
  if (!id) {
    log::error("cannot drop privileges, not starting", {{"error", id.error()}});
    return false;
  }
  if (::geteuid() != 0) {
    if (::geteuid() != id.value().uid)
      log::warn("not started as root: server.user is not applied",
                {{"user", id.value().user}, {"uid", ::geteuid()}, {"gid", ::getegid()}});
    return true;  // e.g. systemd's User= already did it
  }
  auto ok = privileges::switchTo(id.value());
  if (!ok) {
    log::error("cannot drop privileges, not starting",
               {{"user", id.value().user}, {"group", id.value().group}, {"error", ok.error()}});
    return false;
  }
  log::info("privileges dropped", {{"user", id.value().user}, {"uid", id.value().uid},
                                   {"group", id.value().group}, {"gid", id.value().gid}});
  return true;
}

// Files opened again after start, by the identity the gateway runs as: a reload
// (SIGHUP) reads the configuration, the certificates and the passwd-file again.
void warnInaccessible(const std::string& path, const conf::Config& c) {
  std::vector<privileges::PathNeed> needs{{path, R_OK, "configuration"}};
  for (const auto& cert : c.tls.certificates) {
    needs.push_back({cert.cert, R_OK, "tls certificate"});
    needs.push_back({cert.key, R_OK, "tls key"});
  }
  if (c.directory.driver == "file") needs.push_back({c.directory.file.users, R_OK, "passwd-file"});
  needs.push_back({c.server.spool_dir, W_OK | X_OK, "server.spool_dir"});
  if (c.hooks.quarantine.store == "dir") needs.push_back({c.hooks.quarantine.dir, W_OK | X_OK, "quarantine dir"});
  needs.push_back({c.admin.token_file, R_OK, "admin.token_file"});
  for (const auto& why : privileges::inaccessible(needs))
    log::warn("a file the gateway needs after start is not accessible to its user",
              {{"problem", why}, {"uid", ::geteuid()}});
}

// log.file: lines go there from now on (else stderr). Opened as the user the gateway
// runs as, so that a file it cannot write shows at start, not at the first rotation.
bool applyLogFile(const conf::Config& c) {
  if (c.log.file == log::filePath()) return true;
  auto ok = log::openFile(c.log.file);
  if (!ok) {
    log::error("cannot open the log file", {{"error", ok.error()}, {"uid", ::geteuid()}});
    return false;
  }
  return true;
}

// A reload's listener changes (against the sockets bound at start), each logged by
// name with its old and new addresses. Returns "" or the note for the service
// manager's status line.
std::string reportListenerChanges(const std::vector<session::BoundListener>& bound,
                                  const std::vector<conf::ListenerConfig>& next) {
  const auto changes = session::listenerChanges(bound, next);
  if (changes.empty()) return {};
  const bool unprivileged = ::geteuid() != 0;
  std::string summary;
  for (const auto& c : changes) {
    auto joined = [](const std::vector<std::string>& v) {
      std::string out;
      for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
      return out;
    };
    const char* kind = c.kind == session::ListenerChange::Kind::kAdded     ? "added"
                       : c.kind == session::ListenerChange::Kind::kRemoved ? "removed"
                                                                           : "addresses";
    std::string ports;
    for (uint16_t p : c.new_privileged_ports) ports += (ports.empty() ? "" : ", ") + std::to_string(p);
    if (unprivileged && !ports.empty())
      log::warn("listener change not applied: a restart is needed",
                {{"listener", c.listener}, {"change", kind}, {"old", joined(c.before)}, {"new", joined(c.after)},
                 {"note", "port " + ports + " is below 1024 and the gateway no longer runs as root "
                                            "(server.user dropped it): only a start as root can bind it"}});
    else
      log::warn("listener change not applied: a restart is needed",
                {{"listener", c.listener}, {"change", kind}, {"old", joined(c.before)}, {"new", joined(c.after)}});
    summary += (summary.empty() ? "" : "; ") + session::describe(c);
  }
  log::warn("listeners keep their addresses until a restart",
            {{"changes", changes.size()}, {"restart_needed", summary}});
  return "; restart needed for " + summary;
}

// admin.listen on reload: a new address gets a new admin listener, and the old one
// is closed once the new one is open; when the new one cannot be opened the old one
// stays, and the log says why.
void reloadAdmin(std::unique_ptr<admin::AdminServer>& server, std::string& listen, const conf::Config& next,
                 const std::function<std::string()>& metrics) {
  if (next.admin.listen == listen) {
    if (server) server->reloadToken(next.admin.token_file);
    return;
  }
  if (next.admin.listen.empty()) {
    if (server) server->stop();
    server.reset();
    log::info("admin listener closed: admin.listen removed", {{"old", listen}});
    listen.clear();
    return;
  }
  auto fresh = std::make_unique<admin::AdminServer>(next.admin.listen, metrics, next.admin.token_file);
  auto ok = fresh->start();
  if (!ok && server) {
    // The same port on another address may conflict with the old socket: free it and
    // try once more, then fall back to the old address.
    conf::ListenAddress a, b;
    if (conf::parseListenAddress(listen, &a, nullptr) && conf::parseListenAddress(next.admin.listen, &b, nullptr) &&
        a.port == b.port) {
      server->stop();
      server.reset();
      fresh = std::make_unique<admin::AdminServer>(next.admin.listen, metrics, next.admin.token_file);
      ok = fresh->start();
      if (!ok) {
        auto back = std::make_unique<admin::AdminServer>(listen, metrics, next.admin.token_file);
        auto again = back->start();
        if (again)
          server = std::move(back);
        else
          log::error("admin listener lost: neither the new nor the old address could be opened",
                     {{"old", listen}, {"new", next.admin.listen}, {"error", again.error()}});
      }
    }
  }
  if (!ok) {
    conf::ListenAddress b;
    std::string note;
    if (::geteuid() != 0 && conf::parseListenAddress(next.admin.listen, &b, nullptr) && b.port < 1024)
      note = "port " + std::to_string(b.port) + " is below 1024 and the gateway no longer runs as root "
             "(server.user dropped it): a restart is needed to bind it";
    const std::string old = listen.empty() ? "none" : listen;
    if (server) {
      server->reloadToken(next.admin.token_file);
      log::error("admin.listen not changed: the new address cannot be opened, the old one stays",
                 {{"old", old}, {"new", next.admin.listen}, {"error", ok.error()}, {"note", note}});
    } else {
      listen.clear();
      log::error("admin.listen not applied: the address cannot be opened",
                 {{"old", old}, {"new", next.admin.listen}, {"error", ok.error()}, {"note", note}});
    }
    return;
  }
  if (server) server->stop();
  server = std::move(fresh);
  log::info("admin listener moved", {{"old", listen.empty() ? "none" : listen}, {"new", next.admin.listen}});
  listen = next.admin.listen;
}

int run(const std::string& path) {
  // First, while the process is single-threaded (it unsets the variables).
  sd::Notifier notifier = sd::Notifier::fromEnvironment();
  auto loaded = conf::loadConfigFile(path);
  if (!loaded.errors.empty()) {
    reportErrors(loaded.errors);
    return 1;
  }
  const conf::Config& cfg = *loaded.config;
  applyLog(cfg);
  if (!notifier.problem().empty())
    log::warn("cannot notify the service manager", {{"error", notifier.problem()}});
  filters::policy::policyState(cfg.policy.limits.max_keys);  // sized once, kept across reloads
  auto rt = session::Runtime::build(loaded.config);
  if (!rt) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), rt.error().c_str());
    return 1;
  }

  // Signals are taken synchronously by this thread; every other thread blocks them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::vector<std::pair<std::string, io::SockAddr>> addrs;
  for (const auto& l : cfg.listeners)
    for (const auto& a : l.listen) {
      auto sa = io::parseListenAddress(a);
      if (!sa) {
        std::fprintf(stderr, "%s: listener %s: %s\n", path.c_str(), l.name.c_str(), sa.error().c_str());
        return 1;
      }
      addrs.emplace_back(l.name, sa.value());
    }

  unsigned threads = cfg.server.threads ? cfg.server.threads : std::max(1u, std::thread::hardware_concurrency());
  // Bounds a client can really reach: a full queue answers a temporary failure at once.
  io::WorkerPool workers("directory", cfg.server.workers, size_t{cfg.server.workers} * 128);
  io::WorkerPool content("content", cfg.server.content_workers, size_t{cfg.server.content_workers} * 16);
  executors = {&workers, &content};
  auto io = session::chooseIoBackend(cfg.server.io);
  if (!io) {
    std::fprintf(stderr, "mailgate: cannot start: %s\n", io.error().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<session::Reactor>> reactors;
  for (unsigned i = 0; i < threads; i++) {
    auto r = std::make_unique<session::Reactor>(i, workers, content);
    auto ok = r->init(addrs, io.value());
    if (!ok) {
      std::fprintf(stderr, "mailgate: cannot start: %s\n", ok.error().c_str());
      return 1;
    }
    reactors.push_back(std::move(r));
  }
  std::unique_ptr<admin::AdminServer> admin_server;
  const std::function<std::string()> metrics = [&reactors] { return admin::renderMetrics(reactors, executors); };
  std::string admin_listen = cfg.admin.listen;  // the admin listener in service ("" = none)
  if (!cfg.admin.listen.empty()) {
    admin_server = std::make_unique<admin::AdminServer>(cfg.admin.listen, metrics, cfg.admin.token_file);
    // Bound now (before the privilege drop); it answers once the runtime is published.
    auto ok = admin_server->start(/*serve=*/false);
    if (!ok) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), ok.error().c_str());
      return 1;
    }
  }

  // Every socket is bound: root is no longer needed.
  if (!dropPrivileges(cfg.server)) return 1;
  if (!applyLogFile(cfg)) return 1;
  warnInaccessible(path, cfg);

  // From here on a log call never blocks its thread on its output; every way out of
  // run() writes out what is queued (and so does exit()).
  log::startAsync();
  struct FlushLog {
    ~FlushLog() { log::stopAsync(); }
  } flush_log;

  // What is in service: the listeners' sockets stay as bound here until a restart;
  // the rest of the configuration is the last one a reload applied.
  const std::vector<session::BoundListener> bound = session::boundListeners(cfg.listeners);
  std::shared_ptr<const conf::Config> serving = loaded.config;

  rt.value()->startBackground();  // waits (bounded) for the first routing map
  session::publishRuntime(rt.value());
  rt = Error{""};  // drop our reference: the published snapshot owns it
  // Its first /metrics and /status already show the running configuration.
  if (admin_server) admin_server->serve();

  std::vector<std::thread> ts;
  for (auto& r : reactors) ts.emplace_back([&r] { r->run(); });
  session::reloadState().started_unix.store(::time(nullptr), std::memory_order_relaxed);
  log::info("mailgate started", {{"version", MAILGATE_VERSION}, {"threads", threads}, {"config", path},
                                 {"uid", ::geteuid()}, {"gid", ::getegid()}});
  // Listening, routing map loaded (or routing.static), reactors running.
  notifier.send("READY=1\nSTATUS=" + sd::statusLine("serving " + std::to_string(addrs.size()) +
                                                     " listener addresses, configuration generation 1"));

  // The watchdog: a ping every half interval, as long as every reactor ticks.
  const auto wd = std::chrono::duration_cast<std::chrono::milliseconds>(notifier.watchdog());
  const uint64_t wd_ms = static_cast<uint64_t>(wd.count());
  const uint64_t stall_ms = std::max<uint64_t>(wd_ms / 2, 1000);
  auto steadyMs = [] {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  };
  // The first ping after half an interval: the reactors have ticked by then (their
  // heartbeats date from before the wait for the routing map).
  uint64_t next_ping = steadyMs() + wd_ms / 2;
  bool watchdog_stalled = false;
  auto watchdogPing = [&] {
    if (wd_ms == 0) return;
    const uint64_t now = steadyMs();
    if (now < next_ping) return;
    next_ping = now + std::max<uint64_t>(wd_ms / 2, 1);
    std::vector<uint64_t> beats;
    for (const auto& r : reactors) beats.push_back(r->heartbeatMs());
    if (sd::allAlive(beats, now, stall_ms)) {
      notifier.send("WATCHDOG=1");
      watchdog_stalled = false;
    } else if (!watchdog_stalled) {
      watchdog_stalled = true;
      log::error("a reactor stopped ticking: watchdog pings withheld", {{"stall_ms", stall_ms}});
    }
  };
  if (wd_ms) log::info("watchdog enabled", {{"interval_ms", wd_ms}});

  for (;;) {
    watchdogPing();
    siginfo_t si;
    int sig;
    if (wd_ms) {
      const uint64_t now = steadyMs();
      const uint64_t wait = next_ping > now ? next_ping - now : 0;
      timespec until{static_cast<time_t>(wait / 1000), static_cast<long>(wait % 1000) * 1000000L};
      sig = sigtimedwait(&set, &si, &until);
    } else {
      sig = sigwaitinfo(&set, &si);
    }
    if (sig < 0) continue;
    if (sig == SIGPIPE) continue;
    if (sig == SIGUSR1) {
      // logrotate's postrotate (or `systemctl kill -s USR1`): the file is opened afresh.
      const std::string file = log::filePath();
      if (file.empty()) continue;  // stderr: journald needs no reopening
      auto ok = log::openFile(file);
      if (ok)
        log::info("log file reopened", {{"file", file}});
      else
        log::error("cannot reopen the log file, writing on to the old one", {{"error", ok.error()}});
      continue;
    }
    if (sig == SIGHUP) {
      log::info("reloading configuration", {{"config", path}});
      timespec mono{};
      ::clock_gettime(CLOCK_MONOTONIC, &mono);
      notifier.send("RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=" +
                    std::to_string(static_cast<uint64_t>(mono.tv_sec) * 1000000u +
                                   static_cast<uint64_t>(mono.tv_nsec) / 1000u));
      session::ReloadState& rs = session::reloadState();
      rs.last_unix.store(::time(nullptr), std::memory_order_relaxed);
      auto failed = [&rs, &notifier](const std::string& why) {
        rs.last_ok.store(false, std::memory_order_relaxed);
        rs.failures.fetch_add(1, std::memory_order_relaxed);
        notifier.send("READY=1\nSTATUS=" +
                      sd::statusLine("reload failed, serving configuration generation " +
                                     std::to_string(rs.generation.load(std::memory_order_relaxed)) + ": " + why));
      };
      auto nl = conf::loadConfigFile(path);
      if (!nl.errors.empty()) {
        for (const auto& e : nl.errors) log::error("reload failed, keeping the running configuration", {{"error", e.format()}});
        failed(nl.errors.front().format());
        continue;
      }
      auto nrt = session::Runtime::build(nl.config, session::currentRuntime().get());
      if (!nrt) {
        log::error("reload failed, keeping the running configuration", {{"error", nrt.error()}});
        failed(nrt.error());
        continue;
      }
      // Against what is in service: the sockets bound at start, the admin listener now open.
      const std::string restart_note = reportListenerChanges(bound, nl.config->listeners);
      // Applied at start only (the reactors' rings are made then).
      if (nl.config->server.io != cfg.server.io) log::warn("server.io changed: restart to apply it");
      applyLog(*nl.config);
      reloadAdmin(admin_server, admin_listen, *nl.config, metrics);
      // log.file is opened afresh on every reload (a new path, or the same one moved).
      if (!nl.config->log.file.empty() || !log::filePath().empty()) {
        auto lf = log::openFile(nl.config->log.file);
        if (!lf) log::error("cannot open the log file, writing on to the old one", {{"error", lf.error()}});
      }
      auto fresh = nrt.value();
      fresh->startBackground();
      session::publishRuntime(fresh);
      rs.generation.fetch_add(1, std::memory_order_relaxed);
      rs.last_ok.store(true, std::memory_order_relaxed);
      log::info("configuration reloaded", {{"generation", rs.generation.load(std::memory_order_relaxed)}});
      notifier.send("READY=1\nSTATUS=" +
                    sd::statusLine("serving configuration generation " +
                                   std::to_string(rs.generation.load(std::memory_order_relaxed)) + restart_note));
      serving = nl.config;
      continue;
    }
    notifier.send("STOPPING=1\nSTATUS=stopping: sessions get server.shutdown_grace to finish");
    log::info("stopping", {{"signal", strsignal(sig)}});
    for (auto& r : reactors) r->requestStop(serving->server.shutdown_grace);
    break;
  }
  for (auto& t : ts) t.join();
  if (admin_server) admin_server->stop();
  workers.stop();
  session::publishRuntime(nullptr);
  log::info("mailgate stopped");
  return 0;
}

// Options that take a value; "--option=value" is split into "--option" "value" so
// that every command takes both forms. A value is never split itself.
std::vector<std::string> normalizeArgs(int argc, char** argv) {
  static constexpr const char* kTakesValue[] = {
      "--config", "--check-config", "--dump-config", "--init-db", "--auth-test", "--route",
      "--ban",    "--unban",        "--ttl",         "--reason",  "--release",   "--delete",
      "--explain", "--listener",    "--client",      "--helo",    "--from",      "--rcpt",
      "--user",   "--message",      "--test-policy"};
  auto takesValue = [](std::string_view name) {
    for (const char* o : kTakesValue)
      if (name == o) return true;
    return false;
  };
  std::vector<std::string> out;
  if (argc > 0) out.emplace_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (takesValue(a)) {
      out.emplace_back(a);
      if (i + 1 < argc) out.emplace_back(argv[++i]);
      continue;
    }
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string_view::npos && takesValue(a.substr(0, eq))) {
      out.emplace_back(a.substr(0, eq));
      out.emplace_back(a.substr(eq + 1));
      continue;
    }
    out.emplace_back(a);
  }
  return out;
}

}  // namespace

int main(int raw_argc, char** raw_argv) {
  std::vector<std::string> args = normalizeArgs(raw_argc, raw_argv);
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  ptrs.push_back(nullptr);
  const int argc = static_cast<int>(args.size());
  char** argv = ptrs.data();
  auto is = [&](int i, const char* opt) { return i < argc && std::strcmp(argv[i], opt) == 0; };

  if (argc == 2 && (is(1, "--help") || is(1, "-h"))) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc == 2 && is(1, "--version")) {
    std::printf("mailgate %s\n", MAILGATE_VERSION);
    return 0;
  }
  if (argc == 3 && is(1, "--check-config")) return admin::checkConfigMain(argv[2]);
  if (argc == 3 && is(1, "--dump-config")) return admin::dumpConfigMain(argv[2]);
  if (argc == 3 && is(1, "--config")) return run(argv[2]);
  if (argc == 5 && is(1, "--config") && is(3, "--route")) return admin::routeMain(argv[2], argv[4]);
  if (is(1, "--config") && is(3, "--auth-test")) {
    if (argc == 5) return admin::authTestMain(argv[2], argv[4], "");
    if (argc == 7 && is(5, "--listener")) return admin::authTestMain(argv[2], argv[4], argv[6]);
    usage();
    return 2;
  }
  if (argc >= 4 && is(1, "--config") && (is(3, "--bans") || is(3, "--ban") || is(3, "--unban")))
    return bansCli(argv[2], argc, argv);
  if (argc >= 4 && is(1, "--config") && (is(3, "--quarantine") || is(3, "--release") || is(3, "--delete")))
    return quarantineCli(argv[2], argc, argv);
  if (argc >= 4 && is(1, "--config") &&
      (is(3, "--queue") || is(3, "--queue-show") || is(3, "--queue-retry") || is(3, "--queue-delete")))
    return queueCli(argv[2], argc, argv);
  if (argc == 3 && is(1, "--init-db")) return initDb(argv[2]);
  if (argc >= 2 && is(1, "--explain")) return admin::explainMain(argc, argv);
  if (argc >= 2 && is(1, "--test-policy")) return admin::testPolicyMain(argc, argv);
  usage();
  return 2;
}
