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
#include <memory>
#include <string>
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
#include "gateway/admin/policy_cli.h"
#include "filters/policy/policy.h"
#include "filters/policy/policy_state.h"
#include "filters/quarantine.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/io/listener.h"
#include "gateway/io/worker_pool.h"
#include "gateway/session/filter_chain.h"
#include "gateway/session/reactor.h"
#include "gateway/session/runtime.h"

using namespace mailgate;

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: mailgate --config FILE        run in the foreground\n"
               "       mailgate --check-config FILE  validate the configuration\n"
               "       mailgate --init-db FILE       create or migrate the database schema\n"
               "       mailgate --config FILE --bans                 list the running gateway's bans\n"
               "       mailgate --config FILE --ban NET [--ttl 1h] [--reason TEXT]\n"
               "       mailgate --config FILE --unban NET\n"
               "       mailgate --config FILE --quarantine           list the running gateway's quarantine\n"
               "       mailgate --config FILE --release ID           deliver a quarantined message\n"
               "       mailgate --config FILE --delete ID            delete a quarantined message\n"
               "       mailgate --explain FILE --listener L --client IP [--helo H] [--from A] [--rcpt B]...\n"
               "                [--user U] [--message FILE.eml]   what the policy does to a session\n"
               "       mailgate --test-policy FILE CASES.yaml   run policy test cases offline\n"
               "       mailgate --version\n");
}

int checkConfig(const std::string& path) {
  auto r = conf::loadConfigFile(path);
  if (!r.errors.empty()) {
    for (const auto& e : r.errors) std::printf("%s\n", e.format().c_str());
    return 1;
  }
  // Compile what the loader cannot check alone (certificates and keys, passwd-file).
  auto rt = session::Runtime::build(r.config);
  if (!rt) {
    std::printf("%s: %s\n", path.c_str(), rt.error().c_str());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

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
  const std::string req = method + " " + target + " HTTP/1.0\r\nHost: mailgate\r\n\r\n";
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

void applyLog(const conf::Config& c) {
  log::setFormat(c.log.format == conf::LogFormat::kJson ? log::Format::kJson : log::Format::kText);
  switch (c.log.level) {
    case conf::LogLevel::kDebug: log::setLevel(log::Level::kDebug); break;
    case conf::LogLevel::kInfo: log::setLevel(log::Level::kInfo); break;
    case conf::LogLevel::kWarn: log::setLevel(log::Level::kWarn); break;
    case conf::LogLevel::kError: log::setLevel(log::Level::kError); break;
  }
}

// Prometheus text for /metrics: reactor counters summed, backend health, and the
// directory's own counters ("k=v" pairs from statsText()).
// The executors, for /metrics (set once in main before the admin listener starts).
std::vector<const io::WorkerPool*> executors;

void renderExecutorMetrics(std::string& out) {
  struct Metric {
    const char* name;
    const char* help;
    const char* type;
    uint64_t (*get)(const io::WorkerPool&);
  };
  static const Metric kMetrics[] = {
      {"mailgate_executor_queue_depth", "Jobs queued now.", "gauge",
       [](const io::WorkerPool& p) { return p.stats().depth.load(std::memory_order_relaxed); }},
      {"mailgate_executor_queue_limit", "Most jobs the queue holds.", "gauge",
       [](const io::WorkerPool& p) { return static_cast<uint64_t>(p.maxQueue()); }},
      {"mailgate_executor_jobs_total", "Jobs queued.", "counter",
       [](const io::WorkerPool& p) { return p.stats().submitted.load(std::memory_order_relaxed); }},
      {"mailgate_executor_rejected_total", "Jobs refused at once because the queue was full.", "counter",
       [](const io::WorkerPool& p) { return p.stats().rejected.load(std::memory_order_relaxed); }},
      {"mailgate_executor_timeouts_total", "Jobs dropped unrun: they waited past their deadline.", "counter",
       [](const io::WorkerPool& p) { return p.stats().expired.load(std::memory_order_relaxed); }},
      {"mailgate_executor_wait_microseconds_total", "Time jobs waited in the queue before they ran.", "counter",
       [](const io::WorkerPool& p) { return p.stats().wait_us_total.load(std::memory_order_relaxed); }},
      {"mailgate_executor_wait_microseconds_max", "Longest wait of a job in the queue.", "gauge",
       [](const io::WorkerPool& p) { return p.stats().wait_us_max.load(std::memory_order_relaxed); }},
  };
  for (const Metric& m : kMetrics) {
    out += std::string("# HELP ") + m.name + " " + m.help + "\n# TYPE " + m.name + " " + m.type + "\n";
    for (const io::WorkerPool* p : executors)
      out += std::string(m.name) + "{executor=\"" + p->name() + "\"} " + std::to_string(m.get(*p)) + "\n";
  }
}

std::string renderMetrics(const std::vector<std::unique_ptr<session::Reactor>>& reactors) {
  std::string out;
  auto counter = [&](const char* name, const char* help, uint64_t v, const char* type = "counter") {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(v) + "\n";
  };
  auto sum = [&](auto member) {
    uint64_t t = 0;
    for (const auto& r : reactors) t += (r->stats.*member).get();
    return t;
  };
  uint64_t live = 0;
  for (const auto& r : reactors) live += r->stats.live.load(std::memory_order_relaxed);
  counter("mailgate_sessions_active", "Sessions open now.", live, "gauge");
  counter("mailgate_connections_accepted_total", "Connections accepted.", sum(&session::ReactorStats::accepted));
  counter("mailgate_accept_errors_total", "Failed accepts (EMFILE and the like).",
          sum(&session::ReactorStats::accept_errors));
  counter("mailgate_logins_total", "Logins relayed to a storage node.", sum(&session::ReactorStats::logins));
  counter("mailgate_auth_failures_total", "Failed authentications.", sum(&session::ReactorStats::auth_failures));
  counter("mailgate_login_temporary_failures_total", "Logins refused for a temporary reason.",
          sum(&session::ReactorStats::temp_failures));
  counter("mailgate_backend_attempt_failures_total", "Failed storage-node attempts (each may fail over).",
          sum(&session::ReactorStats::backend_failures));
  counter("mailgate_smtp_messages_delivered_total", "SMTP messages answered 250 after the node accepted them.",
          sum(&session::ReactorStats::smtp_delivered));
  counter("mailgate_smtp_messages_deferred_total", "SMTP messages answered 4xx at their end (client retries).",
          sum(&session::ReactorStats::smtp_deferred));
  counter("mailgate_smtp_messages_rejected_total", "SMTP messages answered 5xx at their end.",
          sum(&session::ReactorStats::smtp_rejected));
  counter("mailgate_smtp_framing_errors_total", "SMTP messages or commands with a bare CR/LF or NUL.",
          sum(&session::ReactorStats::smtp_framing_errors));
  counter("mailgate_smtp_pipelining_errors_total", "SMTP clients that sent content before the 354 (refused).",
          sum(&session::ReactorStats::smtp_pipelining_errors));
  counter("mailgate_smtp_spooled_to_file_total", "SMTP messages larger than server.spool_memory.",
          sum(&session::ReactorStats::smtp_spooled_to_file));
  counter("mailgate_stale_completions_total", "Completions for sessions already gone.",
          sum(&session::ReactorStats::stale_completions));
  counter("mailgate_late_worker_answers_total", "Worker answers for sessions already gone.",
          sum(&session::ReactorStats::late_worker_answers));
  counter("mailgate_recv_nobufs_total", "Receives that found the buffer ring empty.",
          sum(&session::ReactorStats::recv_nobufs));
  const session::ChainStats& cs = session::chainStats();
  counter("mailgate_filter_pending_total", "Filter steps that waited for an answer.", cs.pending.load());
  counter("mailgate_filter_timeouts_total", "Filter steps whose deadline passed (failure action applied).",
          cs.timeouts.load());
  counter("mailgate_filter_late_answers_total", "Filter answers that came after the deadline or the session's end.",
          cs.late_answers.load());
  counter("mailgate_filter_cancelled_total", "Pending filter steps cancelled by the session's end.",
          cs.cancelled.load());
  counter("mailgate_filter_refusals_total", "Sessions, commands or messages refused by a filter.",
          cs.refusals.load());
  counter("mailgate_filter_bad_text_total", "Filter reply texts or headers refused (CR, LF, NUL, controls).",
          cs.bad_text.load());
  const filters::ClamdStats& clamd = filters::clamdStats();
  counter("mailgate_clamd_clean_total", "Messages clamd found clean.", clamd.clean.load());
  counter("mailgate_clamd_infected_total", "Messages clamd found a virus in (rejected).", clamd.infected.load());
  counter("mailgate_clamd_errors_total", "clamd scans that failed (every endpoint down, protocol or scanner error).",
          clamd.errors.load());
  counter("mailgate_clamd_timeouts_total", "clamd scans that did not end within hooks.defaults.timeouts.scan.",
          clamd.timeouts.load());
  counter("mailgate_clamd_oversize_total", "Messages too large to scan (max_size or clamd's StreamMaxLength).",
          clamd.oversize.load());
  counter("mailgate_clamd_endpoint_failures_total", "clamd endpoints that could not be connected to, or lost mid-scan.",
          clamd.endpoint_failures.load());
  const filters::MilterStats& milter = filters::milterStats();
  counter("mailgate_milter_sessions_total", "Milter connections negotiated.", milter.sessions.load());
  counter("mailgate_milter_refusals_total", "Stages a milter refused (reject, tempfail, reply code).",
          milter.refusals.load());
  counter("mailgate_milter_discards_total", "Messages a milter discarded (250, not delivered).", milter.discards.load());
  counter("mailgate_milter_modified_total", "Messages a milter changed (headers or body).", milter.modified.load());
  counter("mailgate_milter_quarantined_total", "Messages a milter asked to quarantine.", milter.quarantined.load());
  counter("mailgate_milter_errors_total", "Milter failures (connect, protocol, closed, timeout): on_error applied.",
          milter.errors.load());
  counter("mailgate_milter_timeouts_total", "Milter stages without an answer within the scan timeout.",
          milter.timeouts.load());
  {
    // Per scanner: how often its circuit breaker opened, and the scans it skipped.
    std::string opened, skipped;
    for (const auto& b : filters::scannerBreakerCounts()) {
      opened += "mailgate_scanner_breaker_open_total{scanner=\"" + b.scanner + "\"} " + std::to_string(b.openings) + "\n";
      skipped += "mailgate_scanner_skipped_total{scanner=\"" + b.scanner + "\"} " + std::to_string(b.skipped) + "\n";
    }
    out += "# HELP mailgate_scanner_breaker_open_total Times a scanner's circuit breaker opened.\n"
           "# TYPE mailgate_scanner_breaker_open_total counter\n" + opened;
    out += "# HELP mailgate_scanner_skipped_total Scans skipped because the scanner's circuit breaker was open.\n"
           "# TYPE mailgate_scanner_skipped_total counter\n" + skipped;
  }

  const filters::DlpStats& dlp = filters::dlpStats();
  counter("mailgate_dlp_scanned_total", "Messages the DLP scanner read.", dlp.scanned.load());
  counter("mailgate_dlp_matched_total", "Messages on which a DLP detector fired.", dlp.matched.load());
  counter("mailgate_dlp_errors_total", "DLP scans that failed (spool read error, deadline).",
          dlp.errors.load());
  counter("mailgate_dlp_oversize_total", "Messages over the DLP scanner's max_size (not scanned).",
          dlp.oversize.load());
  counter("mailgate_dlp_truncated_total", "DLP scans stopped at max_size decoded octets.",
          dlp.truncated.load());

  const filters::IcapStats& icap = filters::icapStats();
  counter("mailgate_icap_clean_total", "Messages an ICAP service passed (204, or sent back unchanged).",
          icap.clean.load());
  counter("mailgate_icap_infected_total", "Messages an ICAP service found infected or blocked (rejected).",
          icap.infected.load());
  counter("mailgate_icap_modified_total", "Messages an ICAP service modified (then on_modified applied).",
          icap.modified.load());
  counter("mailgate_icap_errors_total", "ICAP scans that failed (connect, error status, protocol error).",
          icap.errors.load());
  counter("mailgate_icap_timeouts_total", "ICAP scans that did not end within their scan timeout.",
          icap.timeouts.load());
  counter("mailgate_icap_oversize_total", "Messages too large for an ICAP scanner's max_size.", icap.oversize.load());
  counter("mailgate_icap_options_requests_total", "ICAP OPTIONS requests (one per service and Options-TTL).",
          icap.options_requests.load());
  renderExecutorMetrics(out);
  admin::renderPolicyMetrics(out);
  admin::renderQuarantineMetrics(out);
  {
    // Per limit and rule: how often each acted (shadow rules: "shadow").
    std::string lines;
    filters::policy::forEachRuleMetric([&lines](const filters::policy::RuleMetric& m) {
      lines += "mailgate_policy_actions_total{kind=\"" + m.kind + "\",name=\"" + m.name + "\",outcome=\"" +
               m.outcome + "\"} " + std::to_string(m.count.load(std::memory_order_relaxed)) + "\n";
    });
    out += "# HELP mailgate_policy_actions_total Limits exceeded and rules matched, by name and outcome.\n"
           "# TYPE mailgate_policy_actions_total counter\n" + lines;
    const auto counters = filters::policy::policyState().counters.stats();
    counter("mailgate_policy_counter_keys", "Policy counter entries in use.", counters.entries, "gauge");
    counter("mailgate_policy_counter_capacity", "Policy counter entries at most (limits.defaults.max_keys).",
            counters.capacity, "gauge");
    counter("mailgate_policy_counter_evictions_total", "Policy counter entries evicted (least recently used).",
            counters.evictions);
  }
  counter("mailgate_log_lines_dropped_total", "Log lines dropped because the log queue was full.",
          log::droppedLines());
  auto ring_sum = [&](std::atomic<uint64_t> io::Ring::*member) {
    uint64_t t = 0;
    for (const auto& r : reactors) t += (r->ring().*member).load(std::memory_order_relaxed);
    return t;
  };
  counter("mailgate_sq_full_submits_total", "Submits forced by a full io_uring submission queue.",
          ring_sum(&io::Ring::sq_full_submits));
  counter("mailgate_sq_backlogged_total", "Submission entries parked until the kernel took more.",
          ring_sum(&io::Ring::sq_backlogged));
  if (!reactors.empty())
    out += std::string("# HELP mailgate_reactor_info The reactor's ring (server.io).\n# TYPE mailgate_reactor_info gauge\n"
                       "mailgate_reactor_info{io=\"") + io::Ring::backendName(reactors.front()->io()) + "\"} 1\n";
  auto rt = session::currentRuntime();
  if (!rt) return out;
  out += "# HELP mailgate_backend_up Last health-check verdict per storage node.\n# TYPE mailgate_backend_up gauge\n";
  for (const auto& b : rt->router->backends())
    out += "mailgate_backend_up{backend=\"" + b->config->name + "\"} " + (b->up.load() ? "1" : "0") + "\n";
  std::string ds = rt->directory->statsText();
  size_t pos = 0;
  while (pos < ds.size()) {
    size_t end = ds.find(' ', pos);
    if (end == std::string::npos) end = ds.size();
    std::string kv = ds.substr(pos, end - pos);
    size_t eq = kv.find('=');
    if (eq != std::string::npos && eq > 0) {
      std::string name = "mailgate_directory_" + kv.substr(0, eq);
      bool ok = true;
      for (char c : name) ok = ok && (ascii::isAlpha(c) || ascii::isDigit(c) || c == '_');
      if (ok) out += "# TYPE " + name + " counter\n" + name + " " + kv.substr(eq + 1) + "\n";
    }
    pos = end + 1;
  }
  return out;
}

int run(const std::string& path) {
  auto loaded = conf::loadConfigFile(path);
  if (!loaded.errors.empty()) {
    reportErrors(loaded.errors);
    return 1;
  }
  const conf::Config& cfg = *loaded.config;
  applyLog(cfg);
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
  rt.value()->startBackground();
  session::publishRuntime(rt.value());
  rt = Error{""};  // drop our reference: the published snapshot owns it

  std::unique_ptr<admin::AdminServer> admin_server;
  if (!cfg.admin.listen.empty()) {
    admin_server = std::make_unique<admin::AdminServer>(cfg.admin.listen, [&reactors] { return renderMetrics(reactors); });
    auto ok = admin_server->start();
    if (!ok) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), ok.error().c_str());
      return 1;
    }
  }

  // From here on a log call never blocks its thread on stderr; every way out of run()
  // writes out what is queued (and so does exit()).
  log::startAsync();
  struct FlushLog {
    ~FlushLog() { log::stopAsync(); }
  } flush_log;

  std::vector<std::thread> ts;
  for (auto& r : reactors) ts.emplace_back([&r] { r->run(); });
  session::reloadState().started_unix.store(::time(nullptr), std::memory_order_relaxed);
  log::info("mailgate started", {{"version", MAILGATE_VERSION}, {"threads", threads}, {"config", path}});

  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo(&set, &si);
    if (sig < 0) continue;
    if (sig == SIGPIPE) continue;
    if (sig == SIGHUP) {
      log::info("reloading configuration", {{"config", path}});
      session::ReloadState& rs = session::reloadState();
      rs.last_unix.store(::time(nullptr), std::memory_order_relaxed);
      auto failed = [&rs] {
        rs.last_ok.store(false, std::memory_order_relaxed);
        rs.failures.fetch_add(1, std::memory_order_relaxed);
      };
      auto nl = conf::loadConfigFile(path);
      if (!nl.errors.empty()) {
        for (const auto& e : nl.errors) log::error("reload failed, keeping the running configuration", {{"error", e.format()}});
        failed();
        continue;
      }
      auto nrt = session::Runtime::build(nl.config, session::currentRuntime().get());
      if (!nrt) {
        log::error("reload failed, keeping the running configuration", {{"error", nrt.error()}});
        failed();
        continue;
      }
      bool same_listeners = nl.config->listeners.size() == cfg.listeners.size();
      for (size_t i = 0; same_listeners && i < cfg.listeners.size(); i++)
        same_listeners = nl.config->listeners[i].name == cfg.listeners[i].name &&
                         nl.config->listeners[i].listen == cfg.listeners[i].listen;
      if (!same_listeners) log::warn("listener addresses changed: restart to apply them");
      if (nl.config->server.io != cfg.server.io) log::warn("server.io changed: restart to apply it");
      applyLog(*nl.config);
      auto fresh = nrt.value();
      fresh->startBackground();
      session::publishRuntime(fresh);
      rs.generation.fetch_add(1, std::memory_order_relaxed);
      rs.last_ok.store(true, std::memory_order_relaxed);
      log::info("configuration reloaded", {{"generation", rs.generation.load(std::memory_order_relaxed)}});
      continue;
    }
    log::info("stopping", {{"signal", strsignal(sig)}});
    for (auto& r : reactors) r->requestStop(cfg.server.shutdown_grace);
    break;
  }
  for (auto& t : ts) t.join();
  if (admin_server) admin_server->stop();
  workers.stop();
  session::publishRuntime(nullptr);
  log::info("mailgate stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("mailgate %s\n", MAILGATE_VERSION);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check-config") == 0) return checkConfig(argv[2]);
  if (argc == 3 && std::strcmp(argv[1], "--config") == 0) return run(argv[2]);
  if (argc >= 4 && std::strcmp(argv[1], "--config") == 0 &&
      (std::strcmp(argv[3], "--bans") == 0 || std::strcmp(argv[3], "--ban") == 0 ||
       std::strcmp(argv[3], "--unban") == 0))
    return bansCli(argv[2], argc, argv);
  if (argc >= 4 && std::strcmp(argv[1], "--config") == 0 &&
      (std::strcmp(argv[3], "--quarantine") == 0 || std::strcmp(argv[3], "--release") == 0 ||
       std::strcmp(argv[3], "--delete") == 0))
    return quarantineCli(argv[2], argc, argv);
  if (argc == 3 && std::strcmp(argv[1], "--init-db") == 0) return initDb(argv[2]);
  if (argc >= 2 && std::strcmp(argv[1], "--explain") == 0) return admin::explainMain(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "--test-policy") == 0) return admin::testPolicyMain(argc, argv);
  usage();
  return 2;
}
