#include "gateway/admin/admin_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "auth/postgres_policy.h"
#include "filters/policy/policy_state.h"
#include "gateway/admin/bans_api.h"
#include "gateway/admin/quarantine_api.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"
#include "gateway/io/listener.h"
#include "gateway/session/runtime.h"

namespace mailgate::admin {

namespace {
constexpr size_t kMaxRequest = 4096;
constexpr int kIoTimeoutMs = 2000;

void sendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, kIoTimeoutMs) <= 0) return;
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

std::string response(int code, const char* reason, const std::string& body, const char* type) {
  return "HTTP/1.0 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

std::string jsonError(int code, const char* reason, const std::string& message) {
  return response(code, reason, "{\"error\":\"" + jsonEscape(message) + "\"}\n", "application/json");
}
}  // namespace

AdminServer::AdminServer(std::string listen, std::function<std::string()> metrics)
    : listen_(std::move(listen)), metrics_(std::move(metrics)) {}

AdminServer::~AdminServer() { stop(); }

Result<bool> AdminServer::start() {
  auto addr = io::parseListenAddress(listen_);
  if (!addr) return Error{"admin.listen: " + addr.error()};
  auto fd = io::openListener(addr.value(), 64);
  if (!fd) return Error{"admin.listen: " + fd.error()};
  fd_ = fd.value();
  thread_ = std::thread([this] { run(); });
  return true;
}

void AdminServer::stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void AdminServer::run() {
  while (!stop_.load()) {
    pollfd p{fd_, POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r <= 0) continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) continue;
    serve(c);
    ::close(c);
  }
}

void AdminServer::serve(int fd) {
  std::string req;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kIoTimeoutMs);
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos) {
    if (req.size() > kMaxRequest || std::chrono::steady_clock::now() > deadline) return;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    char buf[1024];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    req.append(buf, static_cast<size_t>(n));
  }
  const std::string line = req.substr(0, req.find_first_of("\r\n"));
  if (line.find(" /bans") != std::string::npos) {
    sendAll(fd, bans(line));
    return;
  }
  if (line.find(" /quarantine") != std::string::npos) {
    sendAll(fd, quarantine(line));
    return;
  }
  if (req.rfind("GET /metrics", 0) == 0 && (req[12] == ' ' || req[12] == '?')) {
    sendAll(fd, response(200, "OK", metrics_(), "text/plain; version=0.0.4"));
  } else if (req.rfind("GET /healthz ", 0) == 0) {
    sendAll(fd, response(200, "OK", "ok\n", "text/plain"));
  } else if (req.rfind("GET ", 0) == 0) {
    sendAll(fd, response(404, "Not Found", "not found\n", "text/plain"));
  } else {
    sendAll(fd, response(405, "Method Not Allowed", "GET only\n", "text/plain"));
  }
}

std::string AdminServer::bans(const std::string& request_line) {
  namespace policy = filters::policy;
  HttpRequest req;
  if (!parseRequestLine(request_line, &req)) return jsonError(400, "Bad Request", "malformed request line");
  if (req.path != "/bans" && req.path != "/bans/lift") return response(404, "Not Found", "not found\n", "text/plain");
  policy::BanTable& table = policy::policyState().bans;
  const int64_t now = policy::BanTable::wallMs();
  std::string error;
  if (req.path == "/bans" && req.method == "GET") {
    const std::vector<policy::Ban> list = table.list(now);
    const std::string* format = req.param("format");
    if (format && *format == "table") return response(200, "OK", bansTable(list), "text/plain");
    return response(200, "OK", bansJson(list), "application/json");
  }
  if (req.path == "/bans" && req.method == "POST") {
    BanRequest br;
    if (!parseBanRequest(req, &br, &error)) return jsonError(400, "Bad Request", error);
    const policy::Ban ban = table.banFor(br.net, br.ttl, br.reason, core::hostName(), now);
    policy::policyState().stats.bans_made.fetch_add(1, std::memory_order_relaxed);
    log::info("ban made through the admin endpoint",
              {{"net", ban.net.text()}, {"ttl_s", br.ttl.count() / 1000}, {"reason", ban.reason}});
    return response(200, "OK", banJson(ban) + "\n", "application/json");
  }
  if ((req.path == "/bans" && req.method == "DELETE") || (req.path == "/bans/lift" && req.method == "POST")) {
    policy::NetAddr net;
    if (!parseLiftRequest(req, &net, &error)) return jsonError(400, "Bad Request", error);
    if (!table.lift(net, now)) return jsonError(404, "Not Found", "no ban on " + net.text());
    log::info("ban lifted through the admin endpoint", {{"net", net.text()}});
    return response(200, "OK", "{\"lifted\":\"" + jsonEscape(net.text()) + "\"}\n", "application/json");
  }
  return jsonError(405, "Method Not Allowed", "GET, POST or DELETE /bans, POST /bans/lift");
}

std::string AdminServer::quarantine(const std::string& request_line) {
  HttpRequest req;
  if (!parseRequestLine(request_line, &req)) return jsonError(400, "Bad Request", "malformed request line");
  std::string id;
  bool release = false;
  const bool list = req.path == "/quarantine";
  if (!list && !parseQuarantinePath(req.path, &id, &release))
    return jsonError(404, "Not Found", "no such quarantine entry or route");
  const std::shared_ptr<session::Runtime> rt = session::currentRuntime();
  if (!rt || !rt->quarantine)
    return jsonError(404, "Not Found", "no quarantine store (hooks.quarantine) configured");
  filters::QuarantineStore& store = *rt->quarantine;
  std::string error;
  if (list && req.method == "GET") {
    filters::QuarantineFilter filter;
    size_t limit = 0;
    if (!parseQuarantineList(req, &filter, &limit, &error)) return jsonError(400, "Bad Request", error);
    auto entries = store.list(filter, limit);
    if (!entries) return jsonError(503, "Service Unavailable", entries.error());
    const std::string* format = req.param("format");
    if (format && *format == "table")
      return response(200, "OK", quarantineTable(entries.value()), "text/plain");
    return response(200, "OK", quarantineJson(entries.value()), "application/json");
  }
  if (!list && !release && req.method == "GET") {
    auto e = store.get(id, nullptr);
    if (!e) {
      if (e.error() == "not found") return jsonError(404, "Not Found", "no quarantine entry " + id);
      return jsonError(503, "Service Unavailable", e.error());
    }
    return response(200, "OK", quarantineEntryJson(e.value()) + "\n", "application/json");
  }
  if (!list && !release && req.method == "DELETE") {
    auto r = store.remove(id);
    if (!r) return jsonError(503, "Service Unavailable", r.error());
    if (!r.value()) return jsonError(404, "Not Found", "no quarantine entry " + id);
    filters::quarantineStats().deleted.fetch_add(1);
    log::info("quarantine entry deleted through the admin endpoint", {{"id", id}});
    return response(200, "OK", "{\"deleted\":\"" + id + "\"}\n", "application/json");
  }
  if (release && req.method == "POST") {
    const session::ReleaseOutcome r = session::releaseQuarantined(*rt, id);
    using Status = session::ReleaseOutcome::Status;
    switch (r.status) {
      case Status::kReleased:
        return response(200, "OK", releaseJson(id, r), "application/json");
      case Status::kPartial:
        return response(502, "Bad Gateway", releaseJson(id, r), "application/json");
      case Status::kNotFound:
        return jsonError(404, "Not Found", "no quarantine entry " + id + " (released or deleted already?)");
      case Status::kBusy:
        return jsonError(409, "Conflict", "quarantine entry " + id + " is being released");
      case Status::kError:
        return jsonError(503, "Service Unavailable", r.error);
    }
  }
  return jsonError(405, "Method Not Allowed",
                   "GET /quarantine, GET or DELETE /quarantine/ID, POST /quarantine/ID/release");
}

void renderQuarantineMetrics(std::string& out) {
  auto metric = [&](const char* name, const char* help, int64_t v, const char* type = "counter") {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(v) + "\n";
  };
  const filters::QuarantineStats& q = filters::quarantineStats();
  auto n = [](const std::atomic<uint64_t>& a) {
    return static_cast<int64_t>(a.load(std::memory_order_relaxed));
  };
  metric("mailgate_quarantine_stored_total", "Messages quarantined (answered 250 once durable).",
         n(q.stored));
  metric("mailgate_quarantine_failures_total", "Messages that could not be quarantined (answered 451).",
         n(q.failures));
  metric("mailgate_quarantine_entries", "Entries in the quarantine store.",
         std::max<int64_t>(0, q.entries.load(std::memory_order_relaxed)), "gauge");
  metric("mailgate_quarantine_released_total", "Entries released and delivered.", n(q.released));
  metric("mailgate_quarantine_deleted_total", "Entries deleted by an operator.", n(q.deleted));
  metric("mailgate_quarantine_expired_total", "Entries deleted by the retention sweep.", n(q.expired));
}

void renderPolicyMetrics(std::string& out) {
  namespace policy = filters::policy;
  auto metric = [&](const char* name, const char* help, uint64_t v, const char* type = "counter") {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(v) + "\n";
  };
  policy::PolicyState& st = policy::policyState();
  metric("mailgate_bans_active", "Bans in force now.", st.bans.list(policy::BanTable::wallMs()).size(), "gauge");
  const auth::PolicySyncStats& sync = auth::policySyncStats();
  metric("mailgate_bans_sync_queue", "Ban changes made here waiting to be written to the database.",
         sync.queue.load(std::memory_order_relaxed), "gauge");
  metric("mailgate_bans_sync_dropped_total", "Ban changes dropped unwritten because the queue was full.",
         sync.queue_dropped.load(std::memory_order_relaxed));
  metric("mailgate_bans_sync_errors_total", "Database errors of the cluster sync (bans and counters).",
         sync.errors.load(std::memory_order_relaxed));
  metric("mailgate_bans_sync_reloads_total", "Full loads of the bans from the database.",
         sync.reloads.load(std::memory_order_relaxed));
  metric("mailgate_bans_sync_applied_total", "Ban changes of other gateways applied here.",
         sync.notifications.load(std::memory_order_relaxed));
  metric("mailgate_policy_cluster_flushes_total", "Cluster counter exchanges with the database.",
         sync.flushes.load(std::memory_order_relaxed));
  metric("mailgate_policy_cluster_dropped_total", "Cluster counter events dropped: too many keys pending.",
         sync.counter_dropped.load(std::memory_order_relaxed));
  const policy::PolicyStats& ps = st.stats;
  metric("mailgate_policy_limited_total", "Limits exceeded (any action).", ps.limited.load(std::memory_order_relaxed));
  metric("mailgate_policy_banned_refusals_total", "Connections refused because of a ban.",
         ps.banned_refusals.load(std::memory_order_relaxed));
  metric("mailgate_policy_bans_made_total", "Bans made on this gateway.", ps.bans_made.load(std::memory_order_relaxed));
  metric("mailgate_policy_early_talkers_total", "SMTP clients that spoke before the greeting.",
         ps.early_talkers.load(std::memory_order_relaxed));
  metric("mailgate_policy_line_timeouts_total", "Sessions closed because a command line did not end in time.",
         ps.line_timeouts.load(std::memory_order_relaxed));
  metric("mailgate_policy_toobig_total", "IMAP APPENDs refused by APPENDLIMIT.",
         ps.toobig.load(std::memory_order_relaxed));
}

}  // namespace mailgate::admin
