#include "gateway/session/runtime.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <mutex>

#include "auth/auth_cache.h"
#include "auth/http_directory.h"
#include "auth/passwd_file.h"
#include "auth/postgres_directory.h"
#include "auth/postgres_policy.h"
#include "auth/postgres_quarantine.h"
#include "auth/postgres_queue.h"
#include "filters/clamd_filter.h"
#include "filters/milter_filter.h"
#include "filters/dlp.h"
#include "filters/icap_filter.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"
#include "gateway/queue/dir_queue_store.h"
#include "gateway/session/quarantine_release.h"
#include "gateway/session/queue_runner.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::session {

namespace {
std::mutex g_mu;

// A password file: its first line (CR/LF stripped), at most 1 KiB, not empty.
Result<std::string> readSecret(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{"cannot read it"};
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) return Error{"the first line is empty"};
  if (line.size() > 1024) return Error{"the first line is over 1 KiB"};
  return line;
}

std::shared_ptr<Runtime> g_runtime;

filters::FailureAction failureAction(conf::HookAction a) {
  switch (a) {
    case conf::HookAction::kAccept:
      return filters::FailureAction::kAccept;
    case conf::HookAction::kTempfail:
      return filters::FailureAction::kTempfail;
    case conf::HookAction::kReject:
      return filters::FailureAction::kReject;
  }
  return filters::FailureAction::kTempfail;
}

filters::OversizeAction oversizeAction(conf::OversizeAction a) {
  switch (a) {
    case conf::OversizeAction::kAcceptUnscanned:
      return filters::OversizeAction::kAcceptUnscanned;
    case conf::OversizeAction::kTempfail:
      return filters::OversizeAction::kTempfail;
    case conf::OversizeAction::kReject:
      return filters::OversizeAction::kReject;
  }
  return filters::OversizeAction::kTempfail;
}

// The filter factory of one scanner, by its type; `when` are the flows that run it.
// Each type's factory takes the per-scanner overrides of hooks.defaults.
std::shared_ptr<const filters::FilterFactory> makeScannerFactory(const conf::ScannerConfig& sc,
                                                                 const conf::HooksConfig& h,
                                                                 std::vector<filters::ScanWhen> when,
                                                                 const conf::ServerConfig& server) {
  if (sc.type == "clamd") {
    filters::ClamdOptions o;
    o.name = sc.name;
    o.endpoints = sc.endpoints;
    o.connect_timeout = sc.connect_timeout.value_or(h.connect_timeout);
    o.scan_timeout = sc.scan_timeout.value_or(h.scan_timeout);
    o.max_size = sc.max_size.value_or(h.max_size);
    o.on_error = failureAction(sc.on_error.value_or(h.on_error));
    o.on_oversize = oversizeAction(sc.on_oversize.value_or(h.on_oversize));
    o.stream_max = sc.stream_max;
    o.when = std::move(when);
    o.breaker = filters::scannerBreaker(sc.name, sc.endpoints, sc.breaker_failures, sc.breaker_open);
    return std::make_shared<filters::ClamdFactory>(std::move(o));
  }
  if (sc.type == "milter") {
    // A milter follows the session from connect to data (filters/milter_filter.h).
    filters::MilterOptions o;
    o.name = sc.name;
    o.endpoints = sc.endpoints;
    o.connect_timeout = sc.connect_timeout.value_or(h.connect_timeout);
    o.scan_timeout = sc.scan_timeout.value_or(h.scan_timeout);
    o.max_size = sc.max_size.value_or(h.max_size);
    o.on_error = failureAction(sc.on_error.value_or(h.on_error));
    o.on_oversize = oversizeAction(sc.on_oversize.value_or(h.on_oversize));
    o.when = std::move(when);
    o.spool_dir = server.spool_dir;
    o.quarantine_store = !h.quarantine.store.empty();
    o.breaker = filters::scannerBreaker(sc.name, sc.endpoints, sc.breaker_failures, sc.breaker_open);
    return std::make_shared<filters::MilterFactory>(std::move(o));
  }
  if (sc.type == "dlp") {
    filters::DlpOptions o;
    o.name = sc.name;
    for (const auto& d : sc.detectors) {
      filters::DlpDetector fd;
      fd.id = d.id;
      fd.pattern = d.pattern;
      fd.validate = d.validate == "luhn"         ? filters::DlpValidator::kLuhn
                    : d.validate == "iban_mod97" ? filters::DlpValidator::kIbanMod97
                                                 : filters::DlpValidator::kNone;
      fd.context = d.context;
      fd.context_window = d.context_window;
      fd.min_count = d.min_count;
      o.detectors.push_back(std::move(fd));
    }
    switch (sc.on_match) {
      case conf::DlpAction::kReject:
        o.on_match = filters::DlpOnMatch::kReject;
        break;
      case conf::DlpAction::kQuarantine:
        o.on_match = filters::DlpOnMatch::kQuarantine;
        break;
      case conf::DlpAction::kTag:
        o.on_match = filters::DlpOnMatch::kTag;
        break;
    }
    o.tag_header = sc.tag_header;
    o.max_size = sc.max_size.value_or(h.max_size);
    o.on_oversize = oversizeAction(sc.on_oversize.value_or(h.on_oversize));
    o.on_error = failureAction(sc.on_error.value_or(h.on_error));
    o.scan_timeout = sc.scan_timeout.value_or(h.scan_timeout);
    o.when = std::move(when);
    return filters::makeDlpFactory(std::move(o));
  }
  if (sc.type == "icap") {
    filters::IcapOptions o;
    o.name = sc.name;
    std::string why;
    if (!conf::parseIcapUrl(sc.url, &o.url, &why)) return nullptr;  // the loader refuses this
    o.method = sc.method == "reqmod" ? filters::IcapMethod::kReqmod : filters::IcapMethod::kRespmod;
    switch (sc.on_modified) {
      case conf::ModifiedAction::kAccept: o.on_modified = filters::ModifiedAction::kAccept; break;
      case conf::ModifiedAction::kReject: o.on_modified = filters::ModifiedAction::kReject; break;
      case conf::ModifiedAction::kIgnore: o.on_modified = filters::ModifiedAction::kIgnore; break;
    }
    o.connect_timeout = sc.connect_timeout.value_or(h.connect_timeout);
    o.scan_timeout = sc.scan_timeout.value_or(h.scan_timeout);
    o.max_size = sc.max_size.value_or(h.max_size);
    o.on_error = failureAction(sc.on_error.value_or(h.on_error));
    o.on_oversize = oversizeAction(sc.on_oversize.value_or(h.on_oversize));
    o.when = std::move(when);
    o.temp_dir = server.spool_dir;
    o.memory_limit = server.spool_memory;
    return std::make_shared<filters::IcapFactory>(std::move(o));
  }
  return nullptr;  // the loader refuses other types until they are built
}

// One filter per scanner named by a flow, in the order of first mention; it applies
// to the sessions any of its flows select.
std::shared_ptr<const filters::FilterSet> buildHookFilters(const conf::HooksConfig& h, const conf::ServerConfig& server,
                                                           std::shared_ptr<const filters::policy::Policy> policy) {
  std::vector<std::pair<const conf::ScannerConfig*, std::vector<filters::ScanWhen>>> scanners;
  for (const auto& flow : h.flows) {
    for (const auto& name : flow.run) {
      const conf::ScannerConfig* sc = h.findScanner(name);
      if (!sc) continue;  // the loader refuses this
      auto it = std::find_if(scanners.begin(), scanners.end(), [&](const auto& p) { return p.first == sc; });
      if (it == scanners.end()) {
        scanners.emplace_back(sc, std::vector<filters::ScanWhen>{});
        it = scanners.end() - 1;
      }
      it->second.push_back(filters::ScanWhen{flow.listeners, flow.authenticated});
    }
  }
  auto set = std::make_shared<filters::FilterSet>();
  // The policy first: a banned or limited client costs no scanner work.
  if (policy) set->add(std::make_shared<filters::policy::PolicyFilterFactory>(std::move(policy)));
  for (auto& [sc, when] : scanners)
    if (auto f = makeScannerFactory(*sc, h, std::move(when), server)) set->add(std::move(f));
  return set;
}
}  // namespace

std::shared_ptr<Runtime> currentRuntime() {
  std::lock_guard<std::mutex> g(g_mu);
  return g_runtime;
}

void publishRuntime(std::shared_ptr<Runtime> rt) {
  std::shared_ptr<Runtime> old;
  {
    std::lock_guard<std::mutex> g(g_mu);
    old = std::move(g_runtime);
    g_runtime = std::move(rt);
    if (g_runtime) core::setHostName(g_runtime->config->server.hostname);
  }
  // The old snapshot's background work stops now; sessions keep the rest alive.
  if (old) old->stopBackground();
  // The queue runner belongs to the snapshots that share it: it stops when the new
  // one has another (or none). At the end (rt null) the attempt in progress gets a
  // few seconds; an entry it leaves is the lease's.
  if (old && old->queue_runner) {
    std::shared_ptr<QueueRunner> next;
    {
      std::lock_guard<std::mutex> g(g_mu);
      if (g_runtime) next = g_runtime->queue_runner;
    }
    if (next != old->queue_runner) {
      if (!next && !old->queue_runner->stop())
        log::warn("queue runner still delivering at exit: its entry is taken again after the lease");
      else if (next)
        old->queue_runner->requestStop();
    }
  }
}

Runtime::~Runtime() { stopBackground(); }

namespace {
// This process in the queue's leases: host, pid and start time (a restarted gateway
// is another owner; the leases of the one before it run out).
std::string queueOwnerName() {
  static const std::string name = core::hostName() + ":" + std::to_string(::getpid()) + ":" +
                                  std::to_string(core::wallMs());
  return name;
}
}  // namespace

void Runtime::startBackground() {
  if (health) health->start();
  if (policy_sync) policy_sync->start();
  if (quarantine_sweeper) quarantine_sweeper->start();
  if (queue_runner) queue_runner->start();
  if (!route_watcher) return;
  route_watcher->start();
  // One connect (libpq's connect_timeout is at least 2 s, see pg::withConnectTimeout)
  // and one load (statement_timeout).
  const conf::Duration timeout = config->directory.postgres.timeout;
  if (!route_watcher->waitFirstLoad(std::max<conf::Duration>(std::chrono::seconds(2), timeout) + timeout))
    log::warn(router->table() ? "routing map not reloaded from the database: the previous map applies until it is"
                              : "routing map not loaded from the database: routing.static applies until it is");
}

void Runtime::stopBackground() {
  if (health) health->stop();
  if (route_watcher) route_watcher->stop();
  if (policy_sync && policy_sync.use_count() == 1) policy_sync->stop();  // else a newer snapshot runs it
  if (quarantine_sweeper && quarantine_sweeper.use_count() == 1) quarantine_sweeper->stop();
}

const conf::ListenerConfig* Runtime::listener(const std::string& name) const {
  for (const auto& l : config->listeners)
    if (l.name == name) return &l;
  return nullptr;
}

Result<std::shared_ptr<Runtime>> Runtime::build(std::shared_ptr<const conf::Config> config,
                                               const Runtime* running) {
  auto rt = std::make_shared<Runtime>();
  rt->config = config;
  rt->hostname = config->server.hostname.empty() ? core::systemHostName() : config->server.hostname;
  // At start, what is built now (the cluster identity of the policy sync) already
  // goes by the configured name; a reload's takes effect when it is published.
  if (!running) core::setHostName(config->server.hostname);
  if (!config->tls.certificates.empty()) {
    auto st = tls::ServerTls::build(config->tls);
    if (!st) return Error{"tls: " + st.error()};
    rt->server_tls = std::move(st.value());
  }
  for (const auto& b : config->backends) {
    if (b.tls == conf::TlsMode::kNone) continue;
    auto ct = tls::ClientTls::build(b);
    if (!ct) return Error{"backend " + b.name + ": " + ct.error()};
    rt->backend_tls[b.name] = std::move(ct.value());
  }
  for (const auto& b : config->backends) {
    if (b.login != "master") continue;
    auto pw = readSecret(b.master_password_file);
    if (!pw) return Error{"backend " + b.name + ": master_password_file " + b.master_password_file + ": " + pw.error()};
    rt->master_passwords[b.name] = std::move(pw.value());
  }
  // Kept: postgres only (libpq resolves host names per connection; the http driver
  // resolves its URL's host once, so a reload must build it again).
  const bool keep_directory = running && running->directory && config->directory.driver == "postgres" &&
                              running->config->directory == config->directory;
  if (keep_directory) {
    rt->directory = running->directory;
    log::info("directory kept: its section is unchanged", {{"driver", config->directory.driver}});
  } else if (config->directory.driver == "file") {
    auto pf = std::make_shared<auth::PasswdFile>();
    auto report = pf->load(config->directory.file.users);
    if (!report.loaded) return Error{"directory.file.users: cannot read " + config->directory.file.users};
    for (const auto& p : report.problems) log::warn("passwd-file problem", {{"problem", p}});
    log::info("directory loaded", {{"driver", "file"}, {"users", report.users}});
    rt->directory = std::move(pf);
  } else if (config->directory.driver == "postgres") {
    auto pg = auth::PostgresDirectory::create(config->directory);
    if (!pg) return Error{"directory.postgres: " + pg.error()};
    rt->directory = std::make_shared<auth::CachingDirectory>(pg.value(), config->directory.cache);
    log::info("directory ready", {{"driver", "postgres"}});
  } else if (config->directory.driver == "http") {
    auto http = auth::HttpDirectory::create(config->directory.http);
    if (!http) return Error{"directory.http: " + http.error()};
    rt->directory = std::make_shared<auth::CachingDirectory>(http.value(), config->directory.cache);
    log::info("directory ready", {{"driver", "http"}, {"url", config->directory.http.url}});
  } else {
    return Error{"directory.driver " + config->directory.driver + " is not supported"};
  }
  rt->router = std::make_unique<routing::Router>(config);
  if (config->directory.driver == "postgres") {
    if (auto ok = auth::PostgresRouteWatcher::check(config->directory); !ok) return Error{ok.error()};
    routing::Router* router = rt->router.get();
    rt->route_watcher = std::make_unique<auth::PostgresRouteWatcher>(
        config->directory,
        [router](std::shared_ptr<const routing::RouteTable> t) { router->setTable(std::move(t)); });
    if (running && running->router) router->setTable(running->router->table());  // until the fresh one arrives
    if (keep_directory && running->policy_sync)
      rt->policy_sync = running->policy_sync;
    else
      rt->policy_sync = std::make_shared<auth::PostgresPolicySync>(
          config->directory, filters::policy::policyState(config->policy.limits.max_keys));
  }
  rt->health = std::make_unique<routing::HealthChecker>(*rt->router);
  {
    std::vector<conf::ConfigError> errors;
    std::vector<std::string> warnings;
    rt->policy = filters::policy::Policy::compile(*config, running ? running->policy.get() : nullptr, &errors,
                                                  &warnings);
    for (const auto& w : warnings) log::warn("policy reload kept the old data", {{"problem", w}});
    if (!rt->policy) {
      std::string all;
      for (const auto& e : errors) all += (all.empty() ? "" : "; ") + e.format();
      return Error{all};
    }
  }
  rt->filters = buildHookFilters(config->hooks, config->server, rt->policy);
  const conf::QuarantineConfig& q = config->hooks.quarantine;
  if (running && running->quarantine && running->config->hooks.quarantine.store == q.store &&
      running->config->hooks.quarantine.dir == q.dir &&
      running->config->hooks.quarantine.retention == q.retention &&
      (q.store != "postgres" || running->config->directory == config->directory)) {
    rt->quarantine = running->quarantine;
    rt->quarantine_sweeper = running->quarantine_sweeper;
  } else if (q.store == "dir") {
    auto store = filters::DirQuarantineStore::open(q.dir);
    if (!store) return Error{store.error()};
    rt->quarantine = std::move(store.value());
  } else if (q.store == "postgres") {
    auto store = auth::PostgresQuarantineStore::create(config->directory);
    if (!store) return Error{"hooks.quarantine: " + store.error()};
    rt->quarantine = std::move(store.value());
  }
  if (rt->quarantine && !rt->quarantine_sweeper)
    rt->quarantine_sweeper = std::make_shared<QuarantineSweeper>(rt->quarantine, q.retention);

  const conf::QueueConfig& qc = config->queue;
  if (running && running->queue && running->config->queue == qc &&
      (qc.store != "postgres" || running->config->directory == config->directory)) {
    rt->queue = running->queue;
    rt->queue_runner = running->queue_runner;
  } else if (qc.store == "dir") {
    auto store = queue::DirQueueStore::open(qc.dir, qc.max_entries, qc.max_size);
    if (!store) return Error{"queue: " + store.error()};
    rt->queue = std::move(store.value());
  } else if (qc.store == "postgres") {
    auto store = auth::PostgresQueueStore::create(config->directory, qc);
    if (!store) return Error{"queue: " + store.error()};
    rt->queue = std::move(store.value());
  }
  if (rt->queue && !rt->queue_runner)
    rt->queue_runner = std::make_shared<QueueRunner>(
        rt->queue, qc, [] { return std::shared_ptr<const Runtime>(currentRuntime()); }, queueOwnerName());
  return rt;
}

ReloadState& reloadState() {
  static ReloadState* s = new ReloadState;  // never destroyed: read by the admin thread
  return *s;
}

}  // namespace mailgate::session
