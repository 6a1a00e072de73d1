// mailgate-load: IMAP load generator for the side-by-side benchmark (bench/run.sh).
// Single-threaded epoll; every connection is a bench::Conn state machine.
//
//   mailgate-load sessions --port 143 [--tls none|implicit|starttls] --concurrency 32 --duration 5
//   mailgate-load latency  --port 143 --sessions 500 [--warmup 20]
//   mailgate-load fetch    --port 143 --user bulk --repeat 3
//   mailgate-load idle     --port 143 --concurrency 5000 --hold 5
//   mailgate-load authhttp --listen-port 8185 --backend-port 143 --password pw [--accept-none 1]
//   mailgate-load flood    --port 143 --source 127.0.0.2 --count 20000 --concurrency 16 --duration 20
//   mailgate-load smtplat  --port 25 --to user@domain --messages 200 --warmup 20 --size 10240 [--dot-with-body 1]
//
// Each load mode prints one JSON line on stdout with its figures (idle also prints
// an {"event":"all_idle"} line when every session sits in IDLE). Errors go to stderr.
#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/auth_http.h"
#include "bench/flood.h"
#include "bench/load_conn.h"
#include "bench/smtp_probe.h"

namespace mailgate::bench {
namespace {

struct Options {
  std::string mode;
  std::string host = "127.0.0.1";
  uint16_t port = 143;
  TlsMode tls = TlsMode::kNone;
  std::string sni = "localhost";
  unsigned users = 100;             // user0 .. user<users-1>
  std::string user_prefix = "user";
  std::string user;                 // fixed user (overrides the user<N> rotation)
  std::string password = "password";
  std::string mailbox = "INBOX";
  unsigned concurrency = 32;
  double duration = 5.0;            // seconds (sessions)
  unsigned sessions = 0;            // stop after this many sessions (0 = by duration)
  unsigned warmup = 0;              // sessions run first and not recorded
  unsigned repeat = 1;              // FETCH commands per session (fetch)
  double hold = 5.0;                // seconds to stay in IDLE once all are idle (idle)
  unsigned ramp = 200;              // sessions being set up at once (idle)
  double timeout = 60.0;            // a session setup longer than this fails
  std::string label;                // copied into the JSON line
  // authhttp
  uint16_t listen_port = 0;
  std::string backend_host = "127.0.0.1";
  uint16_t backend_port = 143;
  bool accept_none = false;         // authhttp: Auth-Method none (SMTP, smtp_auth none) is OK
  // smtplat
  unsigned messages = 200;
  unsigned long size = 10240;
  std::string from = "probe@bench.invalid";
  std::string to;
  std::string helo = "probe.bench.invalid";
  bool dot_with_body = false;
  // flood
  std::string source = "127.0.0.2";
  unsigned count = 20000;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "mailgate-load: %s\n"
               "usage: mailgate-load sessions|latency|fetch|idle|authhttp|smtplat|flood [options]\n"
               "  --host H --port P --tls none|implicit|starttls --sni NAME\n"
               "  --users N --user-prefix S --user NAME --password P --mailbox M\n"
               "  --concurrency N --duration S --sessions N --warmup N --repeat N\n"
               "  --hold S --ramp N --timeout S --label TEXT\n"
               "  authhttp: --listen-port P --backend-host H --backend-port P --password P --accept-none 0|1\n"
               "  smtplat: --host H --port P --to ADDR --from ADDR --helo NAME --messages N --warmup N\n"
               "           --size BYTES --timeout S --label TEXT --dot-with-body 0|1\n"
               "  flood: --host H --port P --source ADDR --count N --concurrency N --duration S --timeout S\n",
               why);
  std::exit(2);
}

unsigned long parseUnsigned(const char* name, const char* v, unsigned long max) {
  char* end = nullptr;
  errno = 0;
  unsigned long n = std::strtoul(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || n > max) usage((std::string("bad value for ") + name).c_str());
  return n;
}

double parseSeconds(const char* name, const char* v) {
  char* end = nullptr;
  double d = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(d >= 0) || d > 1e6) usage((std::string("bad value for ") + name).c_str());
  return d;
}

Options parseOptions(int argc, char** argv) {
  if (argc < 2) usage("no mode");
  Options o;
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + k).c_str());
    const char* v = argv[++i];
    if (k == "--host") o.host = v;
    else if (k == "--port") o.port = static_cast<uint16_t>(parseUnsigned("--port", v, 65535));
    else if (k == "--tls") {
      std::string t = v;
      if (t == "none" || t == "plain") o.tls = TlsMode::kNone;
      else if (t == "implicit") o.tls = TlsMode::kImplicit;
      else if (t == "starttls") o.tls = TlsMode::kStarttls;
      else usage("--tls must be none, implicit or starttls");
    } else if (k == "--sni") o.sni = v;
    else if (k == "--users") o.users = static_cast<unsigned>(parseUnsigned("--users", v, 1000000));
    else if (k == "--user-prefix") o.user_prefix = v;
    else if (k == "--user") o.user = v;
    else if (k == "--password") o.password = v;
    else if (k == "--mailbox") o.mailbox = v;
    else if (k == "--concurrency") o.concurrency = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 100000));
    else if (k == "--duration") o.duration = parseSeconds("--duration", v);
    else if (k == "--sessions") o.sessions = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 100000000));
    else if (k == "--warmup") o.warmup = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 1000000));
    else if (k == "--repeat") o.repeat = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 10000));
    else if (k == "--hold") o.hold = parseSeconds("--hold", v);
    else if (k == "--ramp") o.ramp = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 100000));
    else if (k == "--timeout") o.timeout = parseSeconds("--timeout", v);
    else if (k == "--label") o.label = v;
    else if (k == "--listen-port") o.listen_port = static_cast<uint16_t>(parseUnsigned(k.c_str(), v, 65535));
    else if (k == "--backend-host") o.backend_host = v;
    else if (k == "--backend-port") o.backend_port = static_cast<uint16_t>(parseUnsigned(k.c_str(), v, 65535));
    else if (k == "--accept-none") o.accept_none = parseUnsigned(k.c_str(), v, 1) == 1;
    else if (k == "--messages") o.messages = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 10000000));
    else if (k == "--size") o.size = parseUnsigned(k.c_str(), v, 100UL << 20);
    else if (k == "--from") o.from = v;
    else if (k == "--to") o.to = v;
    else if (k == "--helo") o.helo = v;
    else if (k == "--source") o.source = v;
    else if (k == "--count") o.count = static_cast<unsigned>(parseUnsigned(k.c_str(), v, 100000000));
    else if (k == "--dot-with-body") o.dot_with_body = parseUnsigned(k.c_str(), v, 1) == 1;
    else usage(("unknown option " + k).c_str());
  }
  if (o.concurrency == 0) usage("--concurrency must be > 0");
  if (o.users == 0) usage("--users must be > 0");
  return o;
}

const char* tlsName(TlsMode t) {
  switch (t) {
    case TlsMode::kNone:
      return "none";
    case TlsMode::kImplicit:
      return "implicit";
    case TlsMode::kStarttls:
      return "starttls";
  }
  return "?";
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return v[std::min(idx, v.size() - 1)];
}

void raiseFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// The event loop shared by all load modes: slots of connections on one epoll.
class Driver {
 public:
  explicit Driver(const Options& o) : o_(o) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string port = std::to_string(o.port);
    int rc = getaddrinfo(o.host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
      std::fprintf(stderr, "mailgate-load: cannot resolve %s: %s\n", o.host.c_str(), gai_strerror(rc));
      std::exit(1);
    }
    std::memcpy(&addr_, res->ai_addr, res->ai_addrlen);
    addr_len_ = res->ai_addrlen;
    freeaddrinfo(res);
    if (o.tls != TlsMode::kNone) {
      ctx_ = SSL_CTX_new(TLS_client_method());
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
      // Every session is a full handshake (no resumption) so runs are comparable.
      SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
      SSL_CTX_set_options(ctx_, SSL_OP_NO_TICKET);
      SSL_CTX_set_mode(ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    Script script = o.mode == "fetch" ? Script::kFetch : o.mode == "idle" ? Script::kIdle : Script::kLogout;
    unsigned nparams = o.user.empty() ? o.users : 1;
    params_.resize(nparams);
    for (unsigned i = 0; i < nparams; ++i) {
      ConnParams& p = params_[i];
      p.addr = reinterpret_cast<const sockaddr*>(&addr_);
      p.addr_len = addr_len_;
      p.ssl_ctx = ctx_;
      p.tls = o.tls;
      p.sni = o.sni.empty() ? nullptr : o.sni.c_str();
      p.user = o.user.empty() ? o.user_prefix + std::to_string(i) : o.user;
      p.password = o.password;
      p.mailbox = o.mailbox;
      p.script = script;
      p.fetch_repeat = o.repeat;
    }
    slots_.resize(o.concurrency);
    for (auto& s : slots_) s.conn = std::make_unique<Conn>();
  }
  ~Driver() {
    slots_.clear();
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  }

  // Starts a session in slot i. False when it failed at once.
  bool startSlot(size_t i) {
    Slot& s = slots_[i];
    const ConnParams* p = &params_[next_user_++ % params_.size()];
    if (!s.conn->start(p)) return false;
    epoll_event ev{};
    ev.events = s.conn->wantEvents();
    ev.data.u64 = i;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, s.conn->fd(), &ev) != 0) {
      std::perror("epoll_ctl ADD");
      std::exit(1);
    }
    s.armed = ev.events;
    ++active_;
    return true;
  }

  // Waits for readiness (up to timeout_ms) and feeds the connections. Calls
  // on_done(slot) for each slot whose session ended (finished or failed).
  template <typename OnDone>
  void poll(int timeout_ms, OnDone&& on_done) {
    epoll_event events[512];
    int n = epoll_wait(ep_, events, 512, timeout_ms);
    for (int k = 0; k < n; ++k) {
      size_t i = static_cast<size_t>(events[k].data.u64);
      Slot& s = slots_[i];
      s.conn->onEvents(events[k].events);
      settle(i, on_done);
    }
  }

  template <typename OnDone>
  void settle(size_t i, OnDone&& on_done) {
    Slot& s = slots_[i];
    if (s.conn->terminal()) {
      if (s.armed != 0) --active_;
      s.armed = 0;
      on_done(i);
      return;
    }
    uint32_t want = s.conn->wantEvents();
    if (want != s.armed) {
      epoll_event ev{};
      ev.events = want;
      ev.data.u64 = i;
      epoll_ctl(ep_, EPOLL_CTL_MOD, s.conn->fd(), &ev);
      s.armed = want;
    }
  }

  // Fails sessions whose setup has lasted longer than the timeout.
  template <typename OnDone>
  void expire(Clock::time_point now, OnDone&& on_done) {
    auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.timeout));
    for (size_t i = 0; i < slots_.size(); ++i) {
      Conn& c = *slots_[i].conn;
      if (slots_[i].armed == 0 || c.terminal() || c.phase() == Phase::kIdling) continue;
      if (now - c.started() > limit) {
        forceFail(i);
        settle(i, on_done);
      }
    }
  }

  void forceFail(size_t i) {
    // Simplest way to abandon: shut the socket down; the next read fails.
    Conn& c = *slots_[i].conn;
    if (c.fd() >= 0) ::shutdown(c.fd(), SHUT_RDWR);
    c.onEvents(EPOLLIN | EPOLLHUP);
  }

  Conn& conn(size_t i) { return *slots_[i].conn; }
  size_t size() const { return slots_.size(); }
  size_t active() const { return active_; }

 private:
  struct Slot {
    std::unique_ptr<Conn> conn;
    uint32_t armed = 0;  // events registered; 0 = not registered
  };
  const Options& o_;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  SSL_CTX* ctx_ = nullptr;
  int ep_ = -1;
  std::vector<ConnParams> params_;
  std::vector<Slot> slots_;
  size_t next_user_ = 0;
  size_t active_ = 0;
};

struct ErrorLog {
  uint64_t count = 0;
  std::map<std::string, uint64_t> kinds;
  void add(const std::string& e) {
    ++count;
    std::string k = e.substr(0, 120);
    if (kinds.size() < 20 || kinds.count(k) != 0) ++kinds[k];
  }
  void report() const {
    for (const auto& [k, n] : kinds) std::fprintf(stderr, "mailgate-load: %llu x %s\n", static_cast<unsigned long long>(n), k.c_str());
  }
};

std::string labelField(const Options& o) {
  return o.label.empty() ? std::string() : ",\"label\":\"" + o.label + "\"";
}

// sessions / latency: loop connect → … → LOGOUT in every slot.
int runSessions(const Options& o) {
  Driver d(o);
  ErrorLog errors;
  std::vector<double> lat_ms;
  lat_ms.reserve(1 << 16);
  uint64_t started = 0, completed = 0, warm = 0;
  const uint64_t total_limit = o.sessions == 0 ? UINT64_MAX : uint64_t{o.sessions} + o.warmup;
  Clock::time_point t0 = Clock::now();
  Clock::time_point deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration));
  Clock::time_point measure_start = t0;
  Clock::time_point last_done = t0;
  bool stopping = false;
  auto wantMore = [&]() {
    if (stopping) return false;
    if (started >= total_limit) return false;
    if (o.sessions == 0 && Clock::now() >= deadline) return false;
    return true;
  };
  std::vector<size_t> restart;
  auto onDone = [&](size_t i) {
    Conn& c = d.conn(i);
    if (c.phase() == Phase::kFinished) {
      if (warm < o.warmup) {
        ++warm;
        if (warm == o.warmup) {
          measure_start = Clock::now();
          deadline = measure_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration));
        }
      } else {
        ++completed;
        lat_ms.push_back(seconds(c.finished() - c.started()) * 1e3);
        last_done = c.finished();
      }
    } else {
      errors.add(c.error());
    }
    restart.push_back(i);
  };
  for (size_t i = 0; i < d.size() && wantMore(); ++i) {
    ++started;
    if (!d.startSlot(i)) onDone(i);
  }
  Clock::time_point last_expire = t0;
  while (true) {
    for (size_t k = 0; k < restart.size(); ++k) {
      size_t i = restart[k];
      // Target down or broken: give up once every slot has failed twice, nothing done.
      if (errors.count >= 2 * uint64_t{o.concurrency} && completed == 0 && warm == 0) stopping = true;
      if (!wantMore()) continue;
      ++started;
      if (!d.startSlot(i)) onDone(i);  // may append to restart: handled by this loop
    }
    restart.clear();
    if (d.active() == 0 && !wantMore()) break;
    d.poll(100, onDone);
    Clock::time_point now = Clock::now();
    if (now - last_expire > std::chrono::seconds(1)) {
      d.expire(now, onDone);
      last_expire = now;
    }
  }
  double elapsed = seconds(last_done - measure_start);
  double rate = elapsed > 0 ? static_cast<double>(completed) / elapsed : 0;
  double mean = 0;
  for (double v : lat_ms) mean += v;
  if (!lat_ms.empty()) mean /= static_cast<double>(lat_ms.size());
  double med = percentile(lat_ms, 0.5), p99 = percentile(lat_ms, 0.99);
  double mx = lat_ms.empty() ? 0 : lat_ms.back();
  errors.report();
  std::printf(
      "{\"mode\":\"%s\",\"tls\":\"%s\",\"concurrency\":%u,\"sessions\":%llu,\"errors\":%llu,"
      "\"elapsed_s\":%.3f,\"sessions_per_s\":%.1f,\"latency_ms\":{\"median\":%.3f,\"p99\":%.3f,"
      "\"mean\":%.3f,\"max\":%.3f}%s}\n",
      o.mode.c_str(), tlsName(o.tls), o.concurrency, static_cast<unsigned long long>(completed),
      static_cast<unsigned long long>(errors.count), elapsed, rate, med, p99, mean, mx, labelField(o).c_str());
  std::fflush(stdout);
  return completed > 0 ? 0 : 1;
}

// fetch: each slot runs one session doing --repeat FETCH 1:* BODY.PEEK[].
int runFetch(const Options& o) {
  Driver d(o);
  ErrorLog errors;
  uint64_t bytes = 0;
  double fetch_s = 0;
  unsigned done = 0;
  auto onDone = [&](size_t i) {
    Conn& c = d.conn(i);
    if (c.phase() == Phase::kFinished) {
      bytes += c.fetchBytes();
      fetch_s = std::max(fetch_s, seconds(c.fetchTime()));
    } else {
      errors.add(c.error());
    }
    ++done;
  };
  for (size_t i = 0; i < d.size(); ++i)
    if (!d.startSlot(i)) onDone(i);
  while (d.active() > 0) {
    d.poll(100, onDone);
    d.expire(Clock::now(), onDone);
  }
  errors.report();
  double mbps = fetch_s > 0 ? static_cast<double>(bytes) / 1e6 / fetch_s : 0;
  std::printf(
      "{\"mode\":\"fetch\",\"tls\":\"%s\",\"concurrency\":%u,\"repeat\":%u,\"bytes\":%llu,\"errors\":%llu,"
      "\"fetch_s\":%.3f,\"mb_per_s\":%.1f%s}\n",
      tlsName(o.tls), o.concurrency, o.repeat, static_cast<unsigned long long>(bytes),
      static_cast<unsigned long long>(errors.count), fetch_s, mbps, labelField(o).c_str());
  std::fflush(stdout);
  return errors.count == 0 && bytes > 0 ? 0 : 1;
}

// idle: open --concurrency sessions (at most --ramp in set-up at once), IDLE in all,
// report, hold, DONE + LOGOUT.
int runIdle(const Options& o) {
  Driver d(o);
  ErrorLog errors;
  size_t n = d.size(), next = 0, idling = 0, failed = 0, finished = 0;
  auto onDone = [&](size_t i) {
    Conn& c = d.conn(i);
    if (c.phase() == Phase::kFinished) {
      ++finished;
    } else {
      ++failed;
      errors.add(c.error());
    }
  };
  Clock::time_point t0 = Clock::now();
  // Set-up phase. A target that fails a whole ramp's worth with nothing idle is
  // broken: stop starting sessions.
  bool broken = false;
  while (idling + failed < n && !(broken && d.active() == idling)) {
    if (failed >= o.ramp && idling == 0) broken = true;
    while (!broken && next < n && d.active() - idling < o.ramp) {
      if (!d.startSlot(next)) onDone(next);
      ++next;
    }
    d.poll(50, onDone);
    d.expire(Clock::now(), onDone);
    idling = 0;
    for (size_t i = 0; i < next; ++i)
      if (d.conn(i).phase() == Phase::kIdling) ++idling;
  }
  double setup_s = seconds(Clock::now() - t0);
  errors.report();
  std::printf("{\"event\":\"all_idle\",\"idle\":%zu,\"failed\":%zu,\"setup_s\":%.3f%s}\n", idling, failed, setup_s,
              labelField(o).c_str());
  std::fflush(stdout);
  // Hold: keep servicing the sockets (untagged "* OK Still here" and such).
  Clock::time_point hold_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.hold));
  size_t lost = 0;
  while (Clock::now() < hold_end) d.poll(100, onDone);
  for (size_t i = 0; i < next; ++i)
    if (d.conn(i).phase() == Phase::kIdling) d.conn(i).release();
    else if (!d.conn(i).terminal()) ++lost;
  for (size_t i = 0; i < next; ++i)
    if (!d.conn(i).terminal()) d.settle(i, onDone);
  Clock::time_point end_deadline = Clock::now() + std::chrono::seconds(60);
  while (d.active() > 0 && Clock::now() < end_deadline) d.poll(100, onDone);
  errors.report();
  std::printf(
      "{\"mode\":\"idle\",\"tls\":\"%s\",\"sessions\":%zu,\"idle\":%zu,\"failed\":%zu,\"logged_out\":%zu,"
      "\"lost_during_hold\":%zu,\"setup_s\":%.3f,\"hold_s\":%.1f%s}\n",
      tlsName(o.tls), n, idling, failed, finished, lost, setup_s, o.hold, labelField(o).c_str());
  std::fflush(stdout);
  return failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace mailgate::bench

int main(int argc, char** argv) {
  using namespace mailgate::bench;
  signal(SIGPIPE, SIG_IGN);
  Options o = parseOptions(argc, argv);
  raiseFileLimit();
  if (o.mode == "authhttp") {
    if (o.listen_port == 0) usage("authhttp needs --listen-port");
    AuthHttpParams p;
    p.listen_port = o.listen_port;
    p.backend_host = o.backend_host;
    p.backend_port = o.backend_port;
    p.password = o.password;
    p.accept_none = o.accept_none;
    return runAuthHttp(p);
  }
  if (o.mode == "smtplat") {
    if (o.to.empty()) usage("smtplat needs --to");
    SmtpProbeParams p;
    p.host = o.host;
    p.port = o.port;
    p.helo = o.helo;
    p.from = o.from;
    p.to = o.to;
    p.messages = o.messages;
    p.warmup = o.warmup;
    p.size = o.size;
    p.timeout = o.timeout;
    p.label = o.label;
    p.dot_with_body = o.dot_with_body;
    return runSmtpProbe(p);
  }
  if (o.mode == "flood") {
    FloodParams p;
    p.host = o.host;
    p.port = o.port;
    p.source = o.source;
    p.count = o.count;
    p.concurrency = o.concurrency;
    p.duration = o.duration;
    p.timeout = o.timeout;
    p.label = o.label;
    return runFlood(p);
  }
  if (o.mode == "sessions") return runSessions(o);
  if (o.mode == "latency") {
    o.concurrency = 1;
    if (o.sessions == 0) o.sessions = 500;
    return runSessions(o);
  }
  if (o.mode == "fetch") return runFetch(o);
  if (o.mode == "idle") return runIdle(o);
  usage(("unknown mode " + o.mode).c_str());
}
