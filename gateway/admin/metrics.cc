#include "gateway/admin/metrics.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>

#include "filters/circuit_breaker.h"
#include "filters/clamd_filter.h"
#include "filters/dlp.h"
#include "filters/icap_filter.h"
#include "filters/milter_filter.h"
#include "filters/policy/policy.h"
#include "filters/policy/policy_state.h"
#include "gateway/admin/admin_server.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/io/worker_pool.h"
#include "gateway/queue/queue_store.h"
#include "gateway/session/backend_stats.h"
#include "gateway/session/filter_chain.h"
#include "gateway/session/listener_stats.h"
#include "gateway/session/reactor.h"
#include "gateway/session/runtime.h"
#include "gateway/session/scanner_stats.h"
#include "gateway/session/session.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::admin {

std::string escapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string escapeHelp(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string formatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 9.0e15) return std::to_string(static_cast<int64_t>(v));
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

MetricsWriter& MetricsWriter::family(std::string_view name, std::string_view type, std::string_view help) {
  started_.emplace_back(name);
  current_.assign(name);
  skipping_ = !seen_.emplace(name).second;
  if (skipping_) return *this;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += escapeHelp(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
  return *this;
}

MetricsWriter& MetricsWriter::sampleNamed(std::string_view name, Labels labels, std::string_view value,
                                          std::pair<std::string_view, std::string_view> extra) {
  if (skipping_) return *this;
  out_ += name;
  bool first = true;
  auto label = [&](std::string_view k, std::string_view v) {
    out_ += first ? '{' : ',';
    first = false;
    out_ += k;
    out_ += "=\"";
    out_ += escapeLabelValue(v);
    out_ += '"';
  };
  for (const auto& [k, v] : labels) label(k, v);
  if (!extra.first.empty()) label(extra.first, extra.second);
  if (!first) out_ += '}';
  out_ += ' ';
  out_ += value;
  out_ += '\n';
  return *this;
}

MetricsWriter& MetricsWriter::histogram(Labels labels, const LatencyHistogram& h) {
  const std::string bucket = current_ + "_bucket";
  for (size_t i = 0; i < LatencyHistogram::kBoundsSeconds.size(); i++)
    sampleNamed(bucket, labels, std::to_string(h.cumulative(i)),
                {"le", formatValue(LatencyHistogram::kBoundsSeconds[i])});
  const uint64_t count = h.count();
  sampleNamed(bucket, labels, std::to_string(count), {"le", "+Inf"});
  sampleNamed(current_ + "_sum", labels, formatValue(h.sumSeconds()));
  sampleNamed(current_ + "_count", labels, std::to_string(count));
  return *this;
}

namespace {

uint64_t load(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }

// The executors: one line per executor and family; the reactors' spool pools summed.
void renderExecutors(MetricsWriter& w, const std::vector<std::unique_ptr<session::Reactor>>& reactors,
                     const std::vector<const io::WorkerPool*>& executors) {
  struct Row {
    std::string name;
    uint64_t depth = 0, capacity = 0, jobs = 0, rejected = 0, expired = 0, wait_us = 0, wait_us_max = 0;
  };
  std::vector<Row> rows;
  auto add = [](Row& r, const io::WorkerPool& p) {
    const io::ExecutorStats& s = p.stats();
    r.depth += load(s.depth);
    r.capacity += p.maxQueue();
    r.jobs += load(s.submitted);
    r.rejected += load(s.rejected);
    r.expired += load(s.expired);
    r.wait_us += load(s.wait_us_total);
    r.wait_us_max = std::max(r.wait_us_max, load(s.wait_us_max));
  };
  for (const io::WorkerPool* p : executors) {
    rows.push_back(Row{p->name()});
    add(rows.back(), *p);
  }
  if (!reactors.empty()) {
    rows.push_back(Row{"spool"});
    for (const auto& r : reactors) add(rows.back(), r->spoolExecutor());
  }
  auto each = [&](const char* name, const char* type, const char* help, auto get) {
    w.family(name, type, help);
    for (const Row& r : rows) w.sample({{"executor", r.name}}, get(r));
  };
  each("mailgate_executor_queue_depth", "gauge", "Jobs queued now.", [](const Row& r) { return r.depth; });
  each("mailgate_executor_queue_capacity", "gauge", "Most jobs the queue holds.",
       [](const Row& r) { return r.capacity; });
  each("mailgate_executor_jobs_total", "counter", "Jobs queued.", [](const Row& r) { return r.jobs; });
  each("mailgate_executor_rejected_total", "counter", "Jobs refused at once because the queue was full.",
       [](const Row& r) { return r.rejected; });
  each("mailgate_executor_timeouts_total", "counter", "Jobs dropped unrun: they waited past their deadline.",
       [](const Row& r) { return r.expired; });
  each("mailgate_executor_wait_seconds_total", "counter", "Time jobs waited in the queue before they ran.",
       [](const Row& r) { return static_cast<double>(r.wait_us) / 1e6; });
  each("mailgate_executor_wait_seconds_max", "gauge", "Longest wait of a job in the queue so far.",
       [](const Row& r) { return static_cast<double>(r.wait_us_max) / 1e6; });
}

void renderListeners(MetricsWriter& w) {
  const auto ls = session::allListenerStats();
  w.family("mailgate_connections_accepted_total", "counter", "Connections accepted and handed to a session.");
  for (const auto* l : ls) w.sample({{"listener", l->name}}, load(l->accepted));
  w.family("mailgate_sessions_active", "gauge", "Sessions open now.");
  for (const auto* l : ls)
    w.sample({{"listener", l->name}}, std::max<int64_t>(0, l->active.load(std::memory_order_relaxed)));
  w.family("mailgate_accept_errors_total", "counter", "Failed accepts (EMFILE and the like).");
  for (const auto* l : ls) w.sample({{"listener", l->name}}, load(l->accept_errors));
  w.family("mailgate_connections_refused_total", "counter",
           "Connections refused at once: capacity (too many sessions), policy (a ban, limit or rule at connect).");
  for (const auto* l : ls) {
    w.sample({{"listener", l->name}, {"reason", "capacity"}}, load(l->refused_capacity));
    w.sample({{"listener", l->name}, {"reason", "policy"}}, load(l->refused_policy));
  }
  w.family("mailgate_tls_handshakes_total", "counter", "Client TLS handshakes completed (implicit TLS or STARTTLS).");
  for (const auto* l : ls) w.sample({{"listener", l->name}}, load(l->tls_handshakes));
  w.family("mailgate_tls_handshake_failures_total", "counter",
           "Client TLS handshakes that failed, by reason: protocol, version, cipher, certificate, alert, closed.");
  for (const auto* l : ls)
    for (size_t i = 0; i < tls::kHandshakeFailureCount; i++)
      w.sample({{"listener", l->name}, {"reason", tls::handshakeFailureName(static_cast<tls::HandshakeFailure>(i))}},
               load(l->tls_failures[i]));
}

void renderBackends(MetricsWriter& w, const session::Runtime* rt) {
  if (rt && rt->router) {
    const auto& bs = rt->router->backends();
    w.family("mailgate_backend_up", "gauge", "Last health-check verdict per storage node (1 up, 0 down).");
    for (const auto& b : bs) w.sample({{"backend", b->config->name}}, uint64_t{b->up.load() ? 1u : 0u});
    w.family("mailgate_backend_admin_state", "gauge",
             "Administrative state per storage node from the directory: 1 for the state it is in (active, drain, down).");
    for (const auto& b : bs) {
      const int a = b->admin.load();
      w.sample({{"backend", b->config->name}, {"state", "active"}},
               uint64_t{a == static_cast<int>(routing::AdminState::kActive) ? 1u : 0u});
      w.sample({{"backend", b->config->name}, {"state", "drain"}},
               uint64_t{a == static_cast<int>(routing::AdminState::kDrain) ? 1u : 0u});
      w.sample({{"backend", b->config->name}, {"state", "down"}},
               uint64_t{a == static_cast<int>(routing::AdminState::kDown) ? 1u : 0u});
    }
  }
  const auto stats = session::allBackendStats();
  w.family("mailgate_backend_attempts_total", "counter",
           "Logins and SMTP deliveries tried on a storage node (each failed one may fail over).");
  for (const auto* b : stats) w.sample({{"backend", b->name}}, load(b->attempts));
  w.family("mailgate_backend_failures_total", "counter",
           "Failed attempts on a storage node by class: connect, timeout, protocol, tls, temporary_refusal, "
           "auth_rejected, internal.");
  for (const auto* b : stats)
    for (size_t i = 0; i < session::kBackendFailureCount; i++)
      w.sample({{"backend", b->name}, {"class", session::failureName(static_cast<session::BackendFailure>(i))}},
               load(b->failures[i]));
  w.family("mailgate_backend_logins_total", "counter", "IMAP and POP3 sessions relayed to a storage node.");
  for (const auto* b : stats) w.sample({{"backend", b->name}}, load(b->logins));
  w.family("mailgate_backend_sessions_active", "gauge", "IMAP and POP3 sessions relaying to a storage node now.");
  for (const auto* b : stats)
    w.sample({{"backend", b->name}}, std::max<int64_t>(0, b->active.load(std::memory_order_relaxed)));
}

void renderScanners(MetricsWriter& w) {
  const auto ss = session::allScannerStats();
  w.family("mailgate_scanner_scans_total", "counter",
           "Messages each scanner (clamd, ICAP, milter, HTTP hook) looked at, by outcome.");
  for (const auto* s : ss)
    for (size_t i = 0; i < session::kScanOutcomeCount; i++)
      w.sample({{"scanner", s->name}, {"outcome", session::scanOutcomeName(static_cast<session::ScanOutcome>(i))}},
               load(s->outcomes[i]));
  w.family("mailgate_scanner_duration_seconds", "histogram",
           "How long each scanner's step at the end of DATA took, waiting for the scanner included.");
  for (const auto* s : ss) w.histogram({{"scanner", s->name}}, s->duration);
  const auto breakers = filters::scannerBreakerCounts();
  w.family("mailgate_scanner_breaker_state", "gauge", "A scanner's circuit breaker now: 0 closed, 1 half-open, 2 open.");
  for (const auto& b : breakers) {
    uint64_t v = 0;
    switch (b.state) {
      case filters::CircuitBreaker::State::kClosed: v = 0; break;
      case filters::CircuitBreaker::State::kHalfOpen: v = 1; break;
      case filters::CircuitBreaker::State::kOpen: v = 2; break;
    }
    w.sample({{"scanner", b.scanner}}, v);
  }
  w.family("mailgate_scanner_breaker_open_total", "counter", "Times a scanner's circuit breaker opened.");
  for (const auto& b : breakers) w.sample({{"scanner", b.scanner}}, b.openings);
  w.family("mailgate_scanner_skipped_total", "counter",
           "Scans skipped because the scanner's circuit breaker was open.");
  for (const auto& b : breakers) w.sample({{"scanner", b.scanner}}, b.skipped);
}

void renderScannerTypes(MetricsWriter& w) {
  const filters::ClamdStats& clamd = filters::clamdStats();
  w.single("mailgate_clamd_clean_total", "counter", "Messages clamd found clean.", load(clamd.clean));
  w.single("mailgate_clamd_infected_total", "counter", "Messages clamd found a virus in (rejected).",
           load(clamd.infected));
  w.single("mailgate_clamd_errors_total", "counter",
           "clamd scans that failed (every endpoint down, protocol or scanner error).", load(clamd.errors));
  w.single("mailgate_clamd_timeouts_total", "counter",
           "clamd scans that did not end within hooks.defaults.timeouts.scan.", load(clamd.timeouts));
  w.single("mailgate_clamd_oversize_total", "counter",
           "Messages too large to scan (max_size or clamd's StreamMaxLength).", load(clamd.oversize));
  w.single("mailgate_clamd_endpoint_failures_total", "counter",
           "clamd endpoints that could not be connected to, or lost mid-scan.", load(clamd.endpoint_failures));
  const filters::MilterStats& milter = filters::milterStats();
  w.single("mailgate_milter_sessions_total", "counter", "Milter connections negotiated.", load(milter.sessions));
  w.single("mailgate_milter_refusals_total", "counter", "Stages a milter refused (reject, tempfail, reply code).",
           load(milter.refusals));
  w.single("mailgate_milter_discards_total", "counter", "Messages a milter discarded (250, not delivered).",
           load(milter.discards));
  w.single("mailgate_milter_modified_total", "counter", "Messages a milter changed (headers or body).",
           load(milter.modified));
  w.single("mailgate_milter_quarantined_total", "counter", "Messages a milter asked to quarantine.",
           load(milter.quarantined));
  w.single("mailgate_milter_errors_total", "counter",
           "Milter failures (connect, protocol, closed, timeout): on_error applied.", load(milter.errors));
  w.single("mailgate_milter_timeouts_total", "counter", "Milter stages without an answer within the scan timeout.",
           load(milter.timeouts));
  const filters::DlpStats& dlp = filters::dlpStats();
  w.single("mailgate_dlp_scanned_total", "counter", "Messages the DLP scanner read.", load(dlp.scanned));
  w.single("mailgate_dlp_matched_total", "counter", "Messages on which a DLP detector fired.", load(dlp.matched));
  w.single("mailgate_dlp_errors_total", "counter", "DLP scans that failed (spool read error, deadline).",
           load(dlp.errors));
  w.single("mailgate_dlp_oversize_total", "counter", "Messages over the DLP scanner's max_size (not scanned).",
           load(dlp.oversize));
  w.single("mailgate_dlp_truncated_total", "counter", "DLP scans stopped at max_size decoded octets.",
           load(dlp.truncated));
  const filters::IcapStats& icap = filters::icapStats();
  w.single("mailgate_icap_clean_total", "counter", "Messages an ICAP service passed (204, or sent back unchanged).",
           load(icap.clean));
  w.single("mailgate_icap_infected_total", "counter",
           "Messages an ICAP service found infected or blocked (rejected).", load(icap.infected));
  w.single("mailgate_icap_modified_total", "counter",
           "Messages an ICAP service modified (then on_modified applied).", load(icap.modified));
  w.single("mailgate_icap_errors_total", "counter", "ICAP scans that failed (connect, error status, protocol error).",
           load(icap.errors));
  w.single("mailgate_icap_timeouts_total", "counter", "ICAP scans that did not end within their scan timeout.",
           load(icap.timeouts));
  w.single("mailgate_icap_oversize_total", "counter", "Messages too large for an ICAP scanner's max_size.",
           load(icap.oversize));
  w.single("mailgate_icap_options_requests_total", "counter",
           "ICAP OPTIONS requests (one per service and Options-TTL).", load(icap.options_requests));
}

// The directory's "key=value" pairs (Directory::statsText()): gauges for the sizes
// (*_entries), counters (with _total) for the rest.
// The exception queue: the store's size as the runner last read it, and this
// gateway's counters.
void renderQueue(MetricsWriter& w) {
  const queue::QueueStats& q = queue::queueStats();
  w.single("mailgate_queue_entries", "gauge", "Entries in the exception queue (every gateway's, as last read).",
           load(q.entries));
  w.single("mailgate_queue_bytes", "gauge", "Octets of the messages in the exception queue.", load(q.bytes));
  const int64_t oldest = q.oldest_created_ms.load(std::memory_order_relaxed);
  const int64_t now_ms = core::wallMs();
  w.single("mailgate_queue_oldest_age_seconds", "gauge", "Age of the oldest queued entry (0: the queue is empty).",
           static_cast<uint64_t>(oldest > 0 && now_ms > oldest ? (now_ms - oldest) / 1000 : 0));
  w.family("mailgate_queue_recipients_total", "counter",
           "Recipients worked from the queue, by result (expired recipients count as failed too).")
      .sample({{"result", "delivered"}}, load(q.delivered))
      .sample({{"result", "deferred"}}, load(q.deferred))
      .sample({{"result", "failed"}}, load(q.failed))
      .sample({{"result", "expired"}}, load(q.expired));
  w.single("mailgate_queue_attempts_total", "counter", "Delivery attempts from the queue (per entry and node).",
           load(q.attempts));
  w.single("mailgate_queue_dsn_total", "counter", "Delivery status notifications queued for a sender.",
           load(q.dsn_sent));
  w.single("mailgate_queue_dsn_delivered_total", "counter",
           "Delivery status notifications delivered (to the sender's node or the relay).", load(q.dsn_delivered));
  w.family("mailgate_queue_puts_total", "counter",
           "Messages the sessions wrote to the queue, by result (full and error: the client got 451).")
      .sample({{"result", "stored"}}, load(q.queued))
      .sample({{"result", "full"}}, load(q.put_full))
      .sample({{"result", "error"}}, load(q.put_failed));
  w.single("mailgate_queue_duplicates_total", "counter",
           "Recipients of a resent message that the queue already held (no second copy).", load(q.duplicates));
  w.single("mailgate_queue_deleted_total", "counter", "Queue entries deleted by an operator.", load(q.deleted));
}

void renderDirectory(MetricsWriter& w, const std::string& ds) {
  size_t pos = 0;
  while (pos < ds.size()) {
    size_t end = ds.find(' ', pos);
    if (end == std::string::npos) end = ds.size();
    const std::string_view kv(ds.data() + pos, end - pos);
    pos = end + 1;
    const size_t eq = kv.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    const std::string_view key = kv.substr(0, eq);
    bool ok = true;
    for (char c : key) ok = ok && (ascii::isAlpha(c) || ascii::isDigit(c) || c == '_');
    uint64_t v = 0;
    const std::string_view num = kv.substr(eq + 1);
    if (!ok || std::from_chars(num.data(), num.data() + num.size(), v).ec != std::errc{}) continue;
    const bool gauge = key.size() >= 8 && key.substr(key.size() - 8) == "_entries";
    const std::string name = "mailgate_directory_" + std::string(key) + (gauge ? "" : "_total");
    w.single(name, gauge ? "gauge" : "counter",
             gauge ? "Directory cache entries now (" + std::string(key) + ")."
                   : "Directory counter " + std::string(key) + ".",
             v);
  }
}

}  // namespace

std::string renderMetrics(const std::vector<std::unique_ptr<session::Reactor>>& reactors,
                          const std::vector<const io::WorkerPool*>& executors) {
  std::string out;
  MetricsWriter w(out);
  auto rt = session::currentRuntime();

  // The process and its configuration.
  w.family("mailgate_build_info", "gauge", "The running build: always 1, the version in a label.")
      .sample({{"version", MAILGATE_VERSION}, {"openssl", OpenSSL_version(OPENSSL_VERSION)}}, uint64_t{1});
  const session::ReloadState& rs = session::reloadState();
  w.single("mailgate_process_start_time_seconds", "gauge", "When the process started serving, Unix seconds.",
           static_cast<uint64_t>(std::max<int64_t>(0, rs.started_unix.load(std::memory_order_relaxed))));
  w.single("mailgate_config_generation", "gauge",
           "The configuration in service: 1 at start, one more for each successful reload.",
           rs.generation.load(std::memory_order_relaxed));
  w.single("mailgate_config_last_reload_successful", "gauge",
           "Whether the last reload succeeded (1; also before any), or was refused (0).",
           uint64_t{rs.last_ok.load(std::memory_order_relaxed) ? 1u : 0u});
  w.single("mailgate_config_last_reload_timestamp_seconds", "gauge",
           "When the last reload was tried, Unix seconds (0: never).",
           static_cast<uint64_t>(std::max<int64_t>(0, rs.last_unix.load(std::memory_order_relaxed))));
  w.single("mailgate_config_reload_failures_total", "counter",
           "Reloads refused (configuration or build errors); the running configuration was kept.",
           rs.failures.load(std::memory_order_relaxed));
  w.family("mailgate_tls_certificate_expiry_timestamp_seconds", "gauge",
           "The end of each configured server certificate's validity (notAfter), Unix seconds.");
  if (rt && rt->server_tls)
    for (const auto& c : rt->server_tls->certificates())
      w.sample({{"cert", c.path}, {"subject", c.subject_cn}}, static_cast<uint64_t>(std::max<int64_t>(0, c.not_after)));

  // Listeners and sessions.
  renderListeners(w);
  auto sum = [&](auto member) {
    uint64_t t = 0;
    for (const auto& r : reactors) t += (r->stats.*member).get();
    return t;
  };
  using RS = session::ReactorStats;
  w.single("mailgate_logins_total", "counter", "Logins relayed to a storage node.", sum(&RS::logins));
  w.single("mailgate_auth_failures_total", "counter", "Failed authentications.", sum(&RS::auth_failures));
  w.single("mailgate_login_temporary_failures_total", "counter", "Logins refused for a temporary reason.",
           sum(&RS::temp_failures));
  w.single("mailgate_backend_attempt_failures_total", "counter", "Failed storage-node attempts (each may fail over).",
           sum(&RS::backend_failures));
  w.single("mailgate_smtp_messages_delivered_total", "counter",
           "SMTP messages answered 250 after the node accepted them.", sum(&RS::smtp_delivered));
  w.single("mailgate_smtp_messages_deferred_total", "counter",
           "SMTP messages answered 4xx at their end (client retries).", sum(&RS::smtp_deferred));
  w.single("mailgate_smtp_messages_rejected_total", "counter", "SMTP messages answered 5xx at their end.",
           sum(&RS::smtp_rejected));
  w.single("mailgate_smtp_framing_errors_total", "counter", "SMTP messages or commands with a bare CR/LF or NUL.",
           sum(&RS::smtp_framing_errors));
  w.single("mailgate_smtp_pipelining_errors_total", "counter",
           "SMTP clients that sent content before the 354 (refused).", sum(&RS::smtp_pipelining_errors));
  w.single("mailgate_smtp_spooled_to_file_total", "counter", "SMTP messages larger than server.spool_memory.",
           sum(&RS::smtp_spooled_to_file));
  w.single("mailgate_stale_completions_total", "counter", "Completions for sessions already gone.",
           sum(&RS::stale_completions));
  w.single("mailgate_late_worker_answers_total", "counter", "Worker answers for sessions already gone.",
           sum(&RS::late_worker_answers));
  w.single("mailgate_recv_nobufs_total", "counter", "Receives that found the buffer ring empty.",
           sum(&RS::recv_nobufs));

  // Storage nodes.
  renderBackends(w, rt.get());

  // Filters and scanners.
  const session::ChainStats& cs = session::chainStats();
  w.single("mailgate_filter_pending_total", "counter", "Filter steps that waited for an answer.", load(cs.pending));
  w.single("mailgate_filter_timeouts_total", "counter",
           "Filter steps whose deadline passed (failure action applied).", load(cs.timeouts));
  w.single("mailgate_filter_late_answers_total", "counter",
           "Filter answers that came after the deadline or the session's end.", load(cs.late_answers));
  w.single("mailgate_filter_cancelled_total", "counter", "Pending filter steps cancelled by the session's end.",
           load(cs.cancelled));
  w.single("mailgate_filter_refusals_total", "counter", "Sessions, commands or messages refused by a filter.",
           load(cs.refusals));
  w.single("mailgate_filter_bad_text_total", "counter",
           "Filter reply texts or headers refused (CR, LF, NUL, controls).", load(cs.bad_text));
  renderScanners(w);
  renderScannerTypes(w);

  // Executors.
  renderExecutors(w, reactors, executors);

  // Policy (bans, limits, rules) and the quarantine.
  renderPolicyMetrics(out);
  renderQuarantineMetrics(out);
  renderQueue(w);
  w.family("mailgate_policy_actions_total", "counter",
           "Limits exceeded and rules matched, by kind, name and outcome (shadow rules: shadow).");
  filters::policy::forEachRuleMetric([&w](const filters::policy::RuleMetric& m) {
    w.sample({{"kind", m.kind}, {"name", m.name}, {"outcome", m.outcome}}, load(m.count));
  });
  const auto counters = filters::policy::policyState().counters.stats();
  w.single("mailgate_policy_counter_keys", "gauge", "Policy counter entries in use.", counters.entries);
  w.single("mailgate_policy_counter_capacity", "gauge", "Policy counter entries at most (limits.defaults.max_keys).",
           counters.capacity);
  w.single("mailgate_policy_counter_evictions_total", "counter",
           "Policy counter entries evicted (least recently used).", counters.evictions);

  // The process's plumbing.
  w.single("mailgate_log_lines_dropped_total", "counter", "Log lines dropped because the log queue was full.",
           log::droppedLines());
  auto ring_sum = [&](std::atomic<uint64_t> io::Ring::*member) {
    uint64_t t = 0;
    for (const auto& r : reactors) t += (r->ring().*member).load(std::memory_order_relaxed);
    return t;
  };
  w.single("mailgate_sq_full_submits_total", "counter",
           "Submits forced by a full submission queue (io_uring's, or the epoll ring's).",
           ring_sum(&io::Ring::sq_full_submits));
  w.single("mailgate_sq_backlogged_total", "counter", "Submission entries parked until the kernel took more.",
           ring_sum(&io::Ring::sq_backlogged));

  if (!reactors.empty())
    w.family("mailgate_reactor_info", "gauge", "The reactors' ring (server.io): io_uring or epoll.")
        .sample({{"io", io::Ring::backendName(reactors.front()->io())}}, uint64_t{1});

  if (rt && rt->directory) renderDirectory(w, rt->directory->statsText());
  return out;
}

}  // namespace mailgate::admin
