#include "routing/router.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

#include "gateway/core/ascii.h"
#include "gateway/core/log.h"

namespace mailgate::routing {
namespace {

using Clock = std::chrono::steady_clock;

// Longest greeting read; a greeting without a line end by then is judged on what arrived.
constexpr std::size_t kMaxGreeting = 1024;
// Granularity at which a probe notices stop().
constexpr std::chrono::milliseconds kStopSlice{100};
// Floor for health.interval, so a zero or tiny value cannot spin the thread.
constexpr std::chrono::milliseconds kMinInterval{100};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

enum class Wait { kReady, kTimeout, kStopped, kError };

// Polls fd for events until the deadline, in slices so that stop is noticed.
Wait waitFor(int fd, short events, Clock::time_point deadline, const std::atomic<bool>* stop) {
  for (;;) {
    if (stop != nullptr && stop->load()) return Wait::kStopped;
    auto now = Clock::now();
    if (now >= deadline) return Wait::kTimeout;
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) + std::chrono::milliseconds(1);
    auto slice = std::min<std::chrono::milliseconds>(left, kStopSlice);
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, static_cast<int>(slice.count()));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return Wait::kError;
    }
    if (rc > 0) return Wait::kReady;
  }
}

std::string errnoText(std::string_view what, int err) {
  std::string out(what);
  out += ": ";
  out += std::strerror(err);
  return out;
}

void setWhy(std::string* why, std::string text) {
  if (why != nullptr) *why = std::move(text);
}

// Connects to one address; returns the connected fd or -1 with *why set.
int connectOne(const addrinfo& ai, Clock::time_point deadline, const std::atomic<bool>* stop,
               std::string* why) {
  int fd = ::socket(ai.ai_family, ai.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai.ai_protocol);
  if (fd < 0) {
    setWhy(why, errnoText("socket", errno));
    return -1;
  }
  if (::connect(fd, ai.ai_addr, ai.ai_addrlen) == 0) return fd;
  if (errno != EINPROGRESS) {
    setWhy(why, errnoText("connect", errno));
    ::close(fd);
    return -1;
  }
  switch (waitFor(fd, POLLOUT, deadline, stop)) {
    case Wait::kReady: {
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err == 0) return fd;
      setWhy(why, errnoText("connect", err));
      break;
    }
    case Wait::kTimeout:
      setWhy(why, "connect: timed out");
      break;
    case Wait::kStopped:
      setWhy(why, "stopped");
      break;
    case Wait::kError:
      setWhy(why, errnoText("poll", errno));
      break;
  }
  ::close(fd);
  return -1;
}

bool goodGreeting(std::string_view line) {
  return line.starts_with("* OK") || line.starts_with("+OK") || line.starts_with("220");
}

std::string printable(std::string_view s, std::size_t max) {
  std::string out;
  for (char c : s.substr(0, max)) {
    if (c == '\r' || c == '\n') break;
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

}  // namespace

// ---- RouteTable ---------------------------------------------------------------

bool RouteTable::sameContent(const RouteTable& other) const {
  if (entries.size() != other.entries.size() || node_states != other.node_states) return false;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const RouteEntry& a = entries[i];
    const RouteEntry& b = other.entries[i];
    if (a.key != b.key || a.primary != b.primary || a.secondary != b.secondary) return false;
  }
  return true;
}

// ---- Router -------------------------------------------------------------------

Router::Router(std::shared_ptr<const conf::Config> config) : config_(std::move(config)) {
  if (!config_) return;
  for (const auto& bc : config_->backends) {
    auto b = std::make_unique<Backend>();
    b->config = &bc;
    backends_.push_back(std::move(b));
  }
  for (const auto& rc : config_->routing.static_routes) {
    Route r;
    r.primary = find(rc.primary);
    r.secondary = rc.secondary.empty() ? nullptr : find(rc.secondary);
    if (r.primary == nullptr) {  // validated by conf/; keep a usable route if only one side is known
      r.primary = r.secondary;
      r.secondary = nullptr;
    }
    if (rc.domain == "*") {
      default_ = r;
      continue;
    }
    std::string domain = ascii::lower(rc.domain);
    bool seen =
        std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.domain == domain; });
    if (!seen) entries_.push_back(Entry{std::move(domain), r});  // first route for a domain wins
  }
  if (!nodeOverrides().empty()) setTable(nullptr);  // a drain made before a reload holds
}

namespace {
std::mutex overrides_mu;
std::vector<std::pair<std::string, AdminState>>& overridesLocked() {
  static auto* v = new std::vector<std::pair<std::string, AdminState>>;  // never destroyed
  return *v;
}
}  // namespace

const char* adminStateName(AdminState s) {
  switch (s) {
    case AdminState::kActive: return "active";
    case AdminState::kDrain: return "drain";
    case AdminState::kDown: return "down";
  }
  return "active";
}

void setNodeOverride(std::string_view name, AdminState state) {
  std::lock_guard<std::mutex> g(overrides_mu);
  auto& v = overridesLocked();
  std::erase_if(v, [&](const auto& o) { return ascii::iequals(o.first, name); });
  if (state != AdminState::kActive && v.size() < 4096) v.emplace_back(std::string(name), state);
}

std::vector<std::pair<std::string, AdminState>> nodeOverrides() {
  std::lock_guard<std::mutex> g(overrides_mu);
  return overridesLocked();
}

void Router::refreshAdminStates() { setTable(table()); }

void Router::setTable(std::shared_ptr<const RouteTable> table) {
  // Node states first: a backend not listed is active; an override wins.
  std::vector<std::pair<Backend*, AdminState>> states;
  if (table) {
    for (const auto& [name, state] : table->node_states) {
      Backend* b = resolve(name);
      if (!b) continue;
      AdminState st = AdminState::kActive;
      if (ascii::iequals(state, "drain"))
        st = AdminState::kDrain;
      else if (ascii::iequals(state, "down"))
        st = AdminState::kDown;
      states.emplace_back(b, st);
    }
  }
  for (const auto& [name, st] : nodeOverrides())
    if (Backend* b = resolve(name)) states.emplace_back(b, st);
  std::shared_ptr<TableIndex> index;
  if (table) {
    index = std::make_shared<TableIndex>();
    for (const auto& e : table->entries) {
      std::string k = ascii::lower(e.key);
      if (k == "*") {
        if (!index->star) index->star = &e;
      } else if (k.find('@') != std::string::npos) {
        index->users[std::move(k)] = &e;
      } else {
        index->domains.emplace(std::move(k), &e);
      }
    }
  }
  std::lock_guard<std::mutex> g(dyn_mu_);
  auto apply = [&](Backend& b) {
    AdminState st = AdminState::kActive;
    for (const auto& [sb, sst] : states)
      if (sb == &b) st = sst;
    b.admin.store(static_cast<int>(st));
  };
  for (auto& b : backends_) apply(*b);
  for (auto& a : adhoc_) apply(*a->backend);
  table_ = std::move(table);
  index_ = std::move(index);
}

std::shared_ptr<const RouteTable> Router::table() const {
  std::lock_guard<std::mutex> g(dyn_mu_);
  return table_;
}

std::chrono::steady_clock::time_point Router::mapChangedAt() const {
  std::lock_guard<std::mutex> g(dyn_mu_);
  return table_ ? table_->changed_at : std::chrono::steady_clock::time_point{};
}

Backend* Router::resolve(std::string_view name_or_hostport) {
  if (name_or_hostport.empty()) return nullptr;
  if (Backend* b = find(name_or_hostport)) return b;
  std::string host;
  uint16_t port = 0;
  std::string_view v = name_or_hostport;
  if (v.front() == '[') {
    size_t close = v.find(']');
    if (close == std::string_view::npos) return nullptr;
    host = std::string(v.substr(1, close - 1));
    v.remove_prefix(close + 1);
    if (!v.empty() && v.front() != ':') return nullptr;
  } else {
    size_t colon = v.rfind(':');
    if (colon != std::string_view::npos && v.find(':') == colon) {
      host = std::string(v.substr(0, colon));
      v.remove_prefix(colon);
    } else {
      host = std::string(v);
      v = {};
    }
  }
  if (!v.empty()) {  // ":port"
    v.remove_prefix(1);
    unsigned p = 0;
    if (v.empty() || v.size() > 5) return nullptr;
    for (char c : v) {
      if (c < '0' || c > '9') return nullptr;
      p = p * 10 + static_cast<unsigned>(c - '0');
    }
    if (p == 0 || p > 65535) return nullptr;
    port = static_cast<uint16_t>(p);
  }
  if (host.empty()) return nullptr;
  std::string key = ascii::lower(name_or_hostport);
  std::lock_guard<std::mutex> g(dyn_mu_);
  for (auto& a : adhoc_)
    if (a->config.name == key) return a->backend.get();
  if (adhoc_.size() >= 4096) return nullptr;  // bounded: a runaway map cannot grow this forever
  auto a = std::make_unique<AdHoc>();
  a->config.name = key;
  a->config.host = host;
  a->config.ports.imap = port ? port : 143;
  a->config.ports.pop3 = port ? port : 110;
  a->config.ports.smtp = port ? port : 25;
  a->config.ports.lmtp = port ? port : 24;
  a->backend = std::make_unique<Backend>();
  a->backend->config = &a->config;
  Backend* b = a->backend.get();
  adhoc_.push_back(std::move(a));
  return b;
}

Route Router::resolve(const std::string& primary, const std::string& secondary) {
  Route r;
  r.primary = resolve(primary);
  r.secondary = resolve(secondary);
  if (!r.primary) {
    r.primary = r.secondary;
    r.secondary = nullptr;
  }
  return r;
}

Route Router::route(std::string_view user) {
  std::shared_ptr<const TableIndex> idx;
  std::shared_ptr<const RouteTable> keep;  // the entries idx points into
  {
    std::lock_guard<std::mutex> g(dyn_mu_);
    idx = index_;
    keep = table_;
  }
  if (idx) {
    const std::string u = ascii::lower(user);
    const std::size_t at = u.rfind('@');
    const RouteEntry* use = nullptr;
    if (at != std::string::npos) {
      if (auto it = idx->users.find(u); it != idx->users.end()) use = it->second;
      if (!use && at + 1 < u.size())
        if (auto it = idx->domains.find(u.substr(at + 1)); it != idx->domains.end()) use = it->second;
    }
    if (!use) use = idx->star;
    if (use) {
      Route r = resolve(use->primary, use->secondary);
      if (r.primary) return r;
    }
  }
  const std::size_t at = user.rfind('@');
  if (at == std::string_view::npos) return default_;
  const std::string_view domain = user.substr(at + 1);
  for (const auto& e : entries_) {
    if (ascii::iequals(domain, e.domain)) return e.route;
  }
  return default_;
}

Backend* Router::find(std::string_view name) const {
  for (const auto& b : backends_)
    if (b->config->name == name) return b.get();
  return nullptr;
}

// ---- HealthChecker ------------------------------------------------------------

HealthChecker::HealthChecker(Router& router) : router_(router) {}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::start() {
  if (thread_.joinable()) return;
  stop_.store(false);
  thread_ = std::thread([this] { run(); });
}

void HealthChecker::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint16_t HealthChecker::probePort(const conf::BackendConfig& backend) {
  for (uint16_t p : {backend.ports.imap, backend.ports.pop3, backend.ports.smtp, backend.ports.lmtp})
    if (p != 0) return p;
  return 0;
}

bool HealthChecker::probe(const conf::BackendConfig& backend, std::string* why) {
  return probe(backend, why, nullptr);
}

bool HealthChecker::probe(const conf::BackendConfig& backend, std::string* why,
                          const std::atomic<bool>* stop) {
  const uint16_t port = probePort(backend);
  if (port == 0) {
    setWhy(why, "no port configured");
    return false;
  }
  const auto timeout = std::max(backend.health.timeout, conf::Duration(1));
  const auto deadline = Clock::now() + timeout;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  // Blocking resolution is acceptable here: this is the checker's own thread.
  int rc = ::getaddrinfo(backend.host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    setWhy(why, std::string("resolve ") + backend.host + ": " + ::gai_strerror(rc));
    return false;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = connectOne(*ai, deadline, stop, why);
    if (Clock::now() >= deadline) break;
  }
  ::freeaddrinfo(res);
  if (fd < 0) return false;
  Fd sock(fd);

  // Implicit TLS: the greeting is inside TLS; a TCP connect is all this probe checks.
  if (backend.tls == conf::TlsMode::kImplicit) return true;

  std::string line;
  char buf[256];
  while (line.find('\n') == std::string::npos && line.size() < kMaxGreeting) {
    ssize_t n = ::recv(sock.get(), buf, std::min(sizeof buf, kMaxGreeting - line.size()), 0);
    if (n > 0) {
      line.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {
      setWhy(why, line.empty() ? "connection closed before greeting" : "connection closed in greeting");
      return false;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      setWhy(why, errnoText("recv", errno));
      return false;
    }
    switch (waitFor(sock.get(), POLLIN, deadline, stop)) {
      case Wait::kReady:
        break;
      case Wait::kTimeout:
        setWhy(why, "timed out waiting for greeting");
        return false;
      case Wait::kStopped:
        setWhy(why, "stopped");
        return false;
      case Wait::kError:
        setWhy(why, errnoText("poll", errno));
        return false;
    }
  }
  if (!goodGreeting(line)) {
    setWhy(why, "unexpected greeting: " + printable(line, 80));
    return false;
  }
  // Leave politely so the node does not log an aborted session; best effort.
  static constexpr std::string_view kImapLogout = "A LOGOUT\r\n";
  static constexpr std::string_view kQuit = "QUIT\r\n";
  const std::string_view bye = line.starts_with("* OK") ? kImapLogout : kQuit;
  (void)::send(sock.get(), bye.data(), bye.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  return true;
}

void HealthChecker::checkOne(Backend& backend) {
  std::string why;
  const bool up = probe(*backend.config, &why, &stop_);
  if (stop_.load()) return;  // an interrupted probe says nothing about the backend
  if (!up) backend.checks_failed.fetch_add(1, std::memory_order_relaxed);
  const bool was = backend.up.exchange(up);
  if (was && !up) {
    log::warn("backend down", {{"backend", backend.config->name}, {"reason", why}});
  } else if (!was && up) {
    log::info("backend up", {{"backend", backend.config->name}});
  }
}

void HealthChecker::run() {
  const auto& backends = router_.backends();
  std::vector<std::optional<Clock::time_point>> due(backends.size());
  const auto start = Clock::now();
  for (std::size_t i = 0; i < backends.size(); ++i)
    if (probePort(*backends[i]->config) != 0) due[i] = start;

  while (!stop_.load()) {
    std::optional<Clock::time_point> next;
    for (std::size_t i = 0; i < backends.size() && !stop_.load(); ++i) {
      if (!due[i]) continue;
      if (*due[i] <= Clock::now()) {
        checkOne(*backends[i]);
        auto interval =
            std::max<std::chrono::milliseconds>(backends[i]->config->health.interval, kMinInterval);
        due[i] = Clock::now() + interval;
      }
      if (!next || *due[i] < *next) next = due[i];
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (next) {
      cv_.wait_until(lock, *next, [this] { return stop_.load(); });
    } else {
      cv_.wait(lock, [this] { return stop_.load(); });
    }
  }
}

}  // namespace mailgate::routing
