#include "gateway/admin/admin_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "auth/postgres_policy.h"
#include "auth/postgres_routes.h"
#include "filters/policy/policy_state.h"
#include "gateway/admin/admin_auth.h"
#include "gateway/admin/quarantine_api.h"
#include "gateway/admin/queue_api.h"
#include "gateway/admin/status_page.h"
#include "gateway/core/ascii.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"
#include "gateway/io/listener.h"
#include "gateway/session/listener_stats.h"
#include "gateway/session/queue_runner.h"
#include "gateway/session/runtime.h"

namespace mailgate::admin {

namespace {
constexpr size_t kMaxRequest = 8192;  // request line and headers
constexpr size_t kMaxBody = 8192;     // a form or an API call carries a few fields
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

std::string response(int code, const char* reason, const std::string& body, const char* type,
                     const std::string& extra_headers = {}) {
  return "HTTP/1.0 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nCache-Control: no-store\r\n" +
         extra_headers + "Connection: close\r\n\r\n" + body;
}

std::string jsonError(int code, const char* reason, const std::string& message) {
  return response(code, reason, "{\"error\":\"" + jsonEscape(message) + "\"}\n", "application/json");
}

const char* reasonOf(int code) {
  switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

int statusOf(const std::string& resp) { return std::atoi(resp.c_str() + 9); }  // "HTTP/1.0 NNN"

// The body of a response (its JSON "error" member when there is one), for the page
// shown after a form's action failed.
std::string messageOf(const std::string& resp) {
  const size_t h = resp.find("\r\n\r\n");
  std::string body = h == std::string::npos ? std::string() : resp.substr(h + 4);
  const std::string key = "{\"error\":\"";
  if (body.rfind(key, 0) == 0) {
    body = body.substr(key.size());
    const size_t e = body.rfind("\"}");
    if (e != std::string::npos) body.resize(e);
  }
  while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
  return body;
}

// Routes that change state (any method but GET): the credential is checked first.
bool isStateRoute(const std::string& path) {
  return path == "/bans" || path == "/bans/lift" || path == "/backends/drain" || path.rfind("/quarantine", 0) == 0 ||
         path == "/queue" || path.rfind("/queue/", 0) == 0;
}

const char* protocolName(conf::Protocol p) {
  switch (p) {
    case conf::Protocol::kImap: return "imap";
    case conf::Protocol::kPop3: return "pop3";
    case conf::Protocol::kSmtp: return "smtp";
    case conf::Protocol::kSubmission: return "submission";
  }
  return "?";
}

log::RateLimit refusal_log(5);

StatusData gatherStatus(bool writable) {
  namespace policy = filters::policy;
  StatusData d;
  d.version = MAILGATE_VERSION;
  d.host = core::hostName();
  d.now_unix = ::time(nullptr);
  const session::ReloadState& rs = session::reloadState();
  d.started_unix = rs.started_unix.load(std::memory_order_relaxed);
  d.generation = rs.generation.load(std::memory_order_relaxed);
  d.last_reload_ok = rs.last_ok.load(std::memory_order_relaxed);
  d.last_reload_unix = rs.last_unix.load(std::memory_order_relaxed);
  d.reload_failures = rs.failures.load(std::memory_order_relaxed);
  d.writable = writable;
  const int64_t now_ms = policy::BanTable::wallMs();
  d.limited = policy::policyState().limited_top.top(kStatusTopLimited);
  d.bans = policy::policyState().bans.list(now_ms);
  if (d.bans.size() > kStatusBans) {
    d.bans.resize(kStatusBans);
    d.bans_truncated = true;
  }
  const std::shared_ptr<session::Runtime> rt = session::currentRuntime();
  if (!rt) return d;
  const conf::Config& cfg = *rt->config;
  d.directory = cfg.directory.driver;
  d.drain_via = cfg.directory.driver == "postgres" && auth::usesNodesTable(cfg.directory) ? "database" : "process";
  for (const auto& l : cfg.listeners) {
    StatusData::Listener out;
    out.name = l.name;
    out.protocol = protocolName(l.protocol);
    for (size_t i = 0; i < l.listen.size(); ++i) out.listen += (i ? ", " : "") + l.listen[i];
    const session::ListenerStats* st = session::listenerStats(l.name);
    out.accepted = st->accepted.load(std::memory_order_relaxed);
    out.active = st->active.load(std::memory_order_relaxed);
    d.listeners.push_back(std::move(out));
  }
  const auto overrides = routing::nodeOverrides();
  for (const auto& b : rt->router->backends()) {
    StatusData::Backend out;
    out.name = b->config->name;
    out.host = b->config->host;
    out.up = b->up.load();
    out.state = routing::adminStateName(static_cast<routing::AdminState>(b->admin.load()));
    for (const auto& o : overrides) out.local_override = out.local_override || ascii::iequals(o.first, out.name);
    out.checks_failed = b->checks_failed.load();
    d.backends.push_back(std::move(out));
  }
  auto addRoute = [&d](std::string key, std::string primary, std::string secondary, const char* source) {
    if (d.routes.size() >= kStatusRoutes) {
      d.routes_truncated = true;
      return;
    }
    d.routes.push_back({std::move(key), std::move(primary), std::move(secondary), source});
  };
  if (const auto table = rt->router->table())
    for (const auto& e : table->entries) addRoute(e.key, e.primary, e.secondary, "directory");
  for (const auto& r : cfg.routing.static_routes) addRoute(r.domain, r.primary, r.secondary, "static");
  if (rt->quarantine) {
    d.quarantine_configured = true;
    auto entries = rt->quarantine->list(filters::QuarantineFilter{}, kStatusQuarantine);
    if (entries)
      d.quarantine = std::move(entries.value());
    else
      d.quarantine_error = entries.error();
  }
  if (rt->queue) {
    d.queue_configured = true;
    if (auto sum = rt->queue->summary(); !sum) {
      d.queue_error = sum.error();
    } else if (auto entries = rt->queue->list(kStatusQueue); !entries) {
      d.queue_error = entries.error();
    } else {
      d.queue_entries = sum.value().entries;
      d.queue_oldest_created_ms = sum.value().oldest_created_ms;
      d.queue = std::move(entries.value());
    }
  }
  return d;
}
}  // namespace

Result<std::string> readTokenFile(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream in(path);
  if (!in) return Error{"admin.token_file: cannot read " + path + ": " + std::strerror(errno)};
  std::string head(4096, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  std::string token = tokenFromFileContent(head);
  if (token.empty()) return Error{"admin.token_file: " + path + " holds no token (its first line is empty)"};
  return token;
}

AdminServer::AdminServer(std::string listen, std::function<std::string()> metrics, std::string token_file)
    : listen_(std::move(listen)), metrics_(std::move(metrics)), token_file_(std::move(token_file)) {}

AdminServer::~AdminServer() { stop(); }

Result<bool> AdminServer::start(bool serve_now) {
  auto token = readTokenFile(token_file_);
  if (!token) return Error{token.error()};
  {
    std::lock_guard<std::mutex> g(token_mu_);
    token_ = token.value();
  }
  auto addr = io::parseListenAddress(listen_);
  if (!addr) return Error{"admin.listen: " + addr.error()};
  auto fd = io::openListener(addr.value(), 64);
  if (!fd) return Error{"admin.listen: " + fd.error()};
  fd_ = fd.value();
  if (token_file_.empty())
    log::info("admin listener is read-only: no admin.token_file", {{"listen", listen_}});
  if (serve_now) serve();
  return true;
}

void AdminServer::serve() {
  if (fd_ < 0 || thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void AdminServer::reloadToken(const std::string& token_file) {
  auto token = readTokenFile(token_file);
  if (!token) log::error("admin token not read: the admin listener is read-only until it is", {{"error", token.error()}});
  std::lock_guard<std::mutex> g(token_mu_);
  token_file_ = token_file;
  token_ = token ? token.value() : std::string();
}

std::string AdminServer::token() const {
  std::lock_guard<std::mutex> g(token_mu_);
  return token_;
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
  auto readMore = [&]() {
    if (std::chrono::steady_clock::now() > deadline) return false;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) return true;
    char buf[2048];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    req.append(buf, static_cast<size_t>(n));
    return true;
  };
  size_t head_end;
  for (;;) {
    head_end = req.find("\r\n\r\n");
    size_t sep = 4;
    if (head_end == std::string::npos) {
      head_end = req.find("\n\n");
      sep = 2;
    }
    if (head_end != std::string::npos) {
      head_end += sep;
      break;
    }
    if (req.size() > kMaxRequest) {
      sendAll(fd, jsonError(400, "Bad Request", "request head too long"));
      return;
    }
    if (!readMore()) return;
  }
  const std::string head = req.substr(0, head_end);
  size_t body_len = 0;
  if (std::string_view cl = headerValue(head, "Content-Length"); !cl.empty()) {
    bool ok = cl.size() <= 6;
    for (char c : cl) {
      ok = ok && c >= '0' && c <= '9';
      if (ok) body_len = body_len * 10 + static_cast<size_t>(c - '0');
    }
    if (!ok || body_len > kMaxBody) {
      sendAll(fd, jsonError(413, "Payload Too Large", "a body of at most 8192 bytes"));
      return;
    }
  }
  while (req.size() - head_end < body_len)
    if (!readMore()) return;
  const std::string body = req.substr(head_end, body_len);
  const std::string line = head.substr(0, head.find_first_of("\r\n"));

  HttpRequest hr;
  if (!parseRequestLine(line, &hr)) {
    sendAll(fd, jsonError(400, "Bad Request", "malformed request line"));
    return;
  }
  const bool get = hr.method == "GET";
  if (get && hr.path == "/") {
    sendAll(fd, response(302, "Found", "see /status\n", "text/plain", "Location: /status\r\n"));
    return;
  }
  if (get && hr.path == "/status") {
    sendAll(fd, response(200, "OK", renderStatusHtml(gatherStatus(!token().empty())), "text/html; charset=utf-8",
                         "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; "
                         "form-action 'self'; frame-ancestors 'none'\r\nX-Frame-Options: DENY\r\n"));
    return;
  }
  if (get && hr.path == "/status.json") {
    sendAll(fd, response(200, "OK", renderStatusJson(gatherStatus(!token().empty())), "application/json"));
    return;
  }
  if (!isStateRoute(hr.path)) {
    if (get && hr.path == "/metrics") {
      sendAll(fd, response(200, "OK", metrics_(), "text/plain; version=0.0.4"));
    } else if (get && hr.path == "/healthz") {
      sendAll(fd, response(200, "OK", "ok\n", "text/plain"));
    } else if (get) {
      sendAll(fd, response(404, "Not Found", "not found\n", "text/plain"));
    } else {
      sendAll(fd, response(405, "Method Not Allowed", "GET only\n", "text/plain"));
    }
    return;
  }

  // A form of the status page: its fields join the query (the query's come first);
  // "token" and "return" are not parameters.
  std::string form_token;
  bool from_page = false;
  if (!body.empty() && ascii::istartsWith(headerValue(head, "Content-Type"), "application/x-www-form-urlencoded")) {
    std::vector<std::pair<std::string, std::string>> form;
    if (!parseForm(body, &form)) {
      sendAll(fd, jsonError(400, "Bad Request", "malformed form body"));
      return;
    }
    for (auto& [k, v] : form) {
      if (k == "token")
        form_token = std::move(v);
      else if (k == "return")
        from_page = v == "status";
      else
        hr.query.emplace_back(std::move(k), std::move(v));
    }
  }

  std::string out;
  if (!get) {
    switch (checkAdminToken(token(), headerValue(head, "Authorization"), form_token)) {
      case AuthResult::kAllowed:
        break;
      case AuthResult::kReadOnly:
        if (refusal_log.allow())
          log::warn("admin request refused: read-only, no admin.token_file",
                    {{"method", hr.method}, {"path", hr.path}, {"suppressed", refusal_log.suppressed()}});
        out = jsonError(403, "Forbidden",
                        "the admin listener is read-only: configure admin.token_file to change state through it");
        break;
      case AuthResult::kMissing:
      case AuthResult::kWrong: {
        const bool missing = bearerToken(headerValue(head, "Authorization")).empty() && form_token.empty();
        if (refusal_log.allow())
          log::warn("admin request refused: bad credential",
                    {{"method", hr.method}, {"path", hr.path}, {"credential", missing ? "missing" : "wrong"},
                     {"suppressed", refusal_log.suppressed()}});
        const std::string msg = missing ? "a token is required (Authorization: Bearer <token>)" : "wrong token";
        out = response(401, "Unauthorized", "{\"error\":\"" + jsonEscape(msg) + "\"}\n", "application/json",
                       missing ? "WWW-Authenticate: Bearer realm=\"mailgate\"\r\n"
                               : "WWW-Authenticate: Bearer realm=\"mailgate\", error=\"invalid_token\"\r\n");
        break;
      }
    }
  }
  if (out.empty()) {
    if (hr.path == "/bans" || hr.path == "/bans/lift")
      out = bans(hr);
    else if (hr.path == "/backends/drain")
      out = drain(hr);
    else if (hr.path == "/queue" || hr.path.rfind("/queue/", 0) == 0)
      out = queueRoutes(hr);
    else
      out = quarantine(hr);
  }
  if (from_page) {
    const int code = statusOf(out);
    if (code == 200)
      out = response(303, "See Other", "done\n", "text/plain", "Location: /status\r\n");
    else
      out = response(code, reasonOf(code), renderActionPage(code, reasonOf(code), messageOf(out)),
                     "text/html; charset=utf-8");
  }
  sendAll(fd, out);
}

std::string AdminServer::drain(const HttpRequest& req) {
  if (req.method != "POST") return jsonError(405, "Method Not Allowed", "POST /backends/drain?name=NODE&state=drain|active");
  const std::string* name = req.param("name");
  const std::string* state = req.param("state");
  if (!name || name->empty() || name->size() > 255)
    return jsonError(400, "Bad Request", "name: the backend (node) to drain or undrain");
  for (unsigned char c : *name)
    if (c <= 0x20 || c == 0x7f) return jsonError(400, "Bad Request", "name: no blanks or control characters");
  if (!state || (*state != "drain" && *state != "active"))
    return jsonError(400, "Bad Request", "state: drain or active");
  const routing::AdminState st = *state == "drain" ? routing::AdminState::kDrain : routing::AdminState::kActive;
  const std::shared_ptr<session::Runtime> rt = session::currentRuntime();
  if (!rt) return jsonError(503, "Service Unavailable", "not running");
  const conf::DirectoryConfig& dir = rt->config->directory;
  const std::string reply_head = "{\"node\":\"" + jsonEscape(*name) + "\",\"state\":\"" + *state + "\",\"via\":\"";
  if (dir.driver == "postgres" && auth::usesNodesTable(dir)) {
    auto r = auth::setNodeState(dir, *name, *state);
    if (!r) return jsonError(503, "Service Unavailable", r.error());
    if (!r.value()) return jsonError(404, "Not Found", "no node " + *name + " in the nodes table");
    log::info("node state set through the admin endpoint", {{"node", *name}, {"state", *state}, {"via", "database"}});
    // The route watcher hears the NOTIFY within milliseconds: wait (bounded) so that
    // the page shown next has the new state.
    if (routing::Backend* b = rt->router->find(*name)) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (b->admin.load() != static_cast<int>(st) && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return response(200, "OK", reply_head + "database\"}\n", "application/json");
  }
  routing::Backend* b = rt->router->find(*name);
  if (!b) return jsonError(404, "Not Found", "no backend " + *name + " in backends");
  routing::setNodeOverride(b->config->name, st);
  rt->router->refreshAdminStates();
  log::info("node state set through the admin endpoint",
            {{"node", b->config->name}, {"state", *state}, {"via", "process"}});
  return response(200, "OK", reply_head + "process\"}\n", "application/json");
}

std::string AdminServer::bans(const HttpRequest& req) {
  namespace policy = filters::policy;
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

std::string AdminServer::quarantine(const HttpRequest& req) {
  std::string id;
  bool release = false;
  const bool list = req.path == "/quarantine";
  // POST /quarantine/ID/delete: the status page's form for DELETE /quarantine/ID.
  constexpr std::string_view kDelete = "/delete";
  const bool delete_form = req.method == "POST" && req.path.size() > kDelete.size() &&
                           req.path.compare(req.path.size() - kDelete.size(), kDelete.size(), kDelete) == 0;
  const std::string path = delete_form ? req.path.substr(0, req.path.size() - kDelete.size()) : req.path;
  if (!list && (!parseQuarantinePath(path, &id, &release) || (delete_form && release)))
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
  if (!list && !release && (req.method == "DELETE" || delete_form)) {
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

std::string AdminServer::queueRoutes(const HttpRequest& req) {
  std::string id;
  bool id_valid = false;
  const bool list = req.path == "/queue";
  const QueueRoute route = list ? QueueRoute::kNone : parseQueuePath(req.path, &id, &id_valid);
  if (!list && route == QueueRoute::kNone) return jsonError(404, "Not Found", "no such queue route");
  if (!list && !id_valid) return jsonError(400, "Bad Request", "not a queue id: [A-Za-z0-9._-], at most 64");
  const std::shared_ptr<session::Runtime> rt = session::currentRuntime();
  if (!rt || !rt->queue) return jsonError(503, "Service Unavailable", "no exception queue (queue.store) configured");
  queue::QueueStore& store = *rt->queue;
  if (list && req.method == "GET") {
    size_t limit = 0;
    std::string error;
    if (!parseQueueList(req, &limit, &error)) return jsonError(400, "Bad Request", error);
    auto entries = store.list(limit);
    if (!entries) return jsonError(503, "Service Unavailable", entries.error());
    const std::string* format = req.param("format");
    if (format && *format == "table")
      return response(200, "OK", queueTable(entries.value(), filters::wallMs()), "text/plain");
    return response(200, "OK", queueJson(entries.value()), "application/json");
  }
  if (route == QueueRoute::kEntry && req.method == "GET") {
    auto e = store.get(id);
    if (!e) return jsonError(503, "Service Unavailable", e.error());
    if (!e.value()) return jsonError(404, "Not Found", "no queue entry " + id);
    return response(200, "OK", queueEntryJson(*e.value(), true) + "\n", "application/json");
  }
  if (route == QueueRoute::kRetry && req.method == "POST") {
    auto r = store.retryNow(id);
    if (!r) return jsonError(503, "Service Unavailable", r.error());
    if (!r.value()) return jsonError(404, "Not Found", "no queue entry " + id);
    if (rt->queue_runner) rt->queue_runner->wake();
    log::info("queue entry retried by an operator", {{"queue_id", id}});
    return response(200, "OK", "{\"retry\":\"" + jsonEscape(id) + "\"}\n", "application/json");
  }
  if ((route == QueueRoute::kEntry && req.method == "DELETE") ||
      (route == QueueRoute::kDelete && req.method == "POST")) {
    auto r = store.remove(id, "");
    if (!r) return jsonError(503, "Service Unavailable", r.error());
    if (!r.value()) return jsonError(404, "Not Found", "no queue entry " + id);
    queue::queueStats().deleted.fetch_add(1, std::memory_order_relaxed);
    log::info("queue entry deleted by an operator", {{"queue_id", id}});
    return response(200, "OK", "{\"deleted\":\"" + jsonEscape(id) + "\"}\n", "application/json");
  }
  return jsonError(405, "Method Not Allowed", "GET /queue, GET or DELETE /queue/ID, POST /queue/ID/retry");
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
