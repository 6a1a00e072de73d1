#pragma once
// Routing: which storage node serves a user, and is it up. Built from the config
// snapshot; health state is shared by all reactors (atomics) and updated by the
// HealthChecker thread.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "conf/config.h"

namespace mailgate::routing {

// A node's administrative state, from the directory (nodes table): drain and down
// take no new sessions; established ones are left alone.
enum class AdminState : int { kActive = 0, kDrain = 1, kDown = 2 };

const char* adminStateName(AdminState s);

// Process-local node states set through the admin endpoint (POST /backends/drain)
// where the directory has no nodes table to write: they win over the directory's
// state, outlive a reload (every Router reads them) and end with the process.
// Setting kActive removes the override. Names are compared case-insensitively.
void setNodeOverride(std::string_view name, AdminState state);
std::vector<std::pair<std::string, AdminState>> nodeOverrides();

struct Backend {
  const conf::BackendConfig* config = nullptr;  // lives as long as the config snapshot
  std::atomic<bool> up{true};                   // last health-check verdict (optimistic at start)
  std::atomic<uint64_t> checks_failed{0};
  std::atomic<int> admin{static_cast<int>(AdminState::kActive)};
  bool acceptsSessions() const { return admin.load() == static_cast<int>(AdminState::kActive); }
};

// A routing map from the directory (PostgreSQL routes/nodes), swapped whole.
struct RouteEntry {
  std::string key;        // "*", "domain" or "user@domain" (any case; matched case-insensitively)
  std::string primary;    // backend name or "host[:port]"
  std::string secondary;  // may be empty
};
struct RouteTable {
  std::vector<RouteEntry> entries;
  // node (backend name or host) → "active" | "drain" | "down"; nodes not listed are active.
  std::vector<std::pair<std::string, std::string>> node_states;
  // When the directory's routing data last changed, or may have (a notification, a
  // new connection after which changes may have been missed): set by whoever loads
  // the table. A route hint the directory gave before this time is older than this
  // map and loses to it (see auth::CachingDirectory and filters::SessionFacts::route_map).
  std::chrono::steady_clock::time_point changed_at{};
  // Same routes and node states (changed_at not compared).
  bool sameContent(const RouteTable& other) const;
};

struct Route {
  Backend* primary = nullptr;
  Backend* secondary = nullptr;  // may be null
};

class Router {
 public:
  explicit Router(std::shared_ptr<const conf::Config> config);
  // Route for "user@domain" (domain case-insensitive); a user without domain or an
  // unknown domain takes the "*" route; no route at all → both null.
  // The directory's map (when set) is consulted first: "user@domain", then
  // "domain", then "*"; then routing.static.
  Route route(std::string_view user);
  Backend* find(std::string_view name) const;
  // A backend name from the config, or "host[:port]" (an ad-hoc backend, created
  // once and kept; its ports are the protocol defaults unless a port is given,
  // which then applies to every protocol). Null for an empty or malformed value.
  Backend* resolve(std::string_view name_or_hostport);
  Route resolve(const std::string& primary, const std::string& secondary);
  // Thread-safe: installs the directory's map and node states (null = none).
  void setTable(std::shared_ptr<const RouteTable> table);
  // Applies the node states again (the table's, then the overrides): after
  // setNodeOverride().
  void refreshAdminStates();
  std::shared_ptr<const RouteTable> table() const;
  // The installed map's changed_at; the epoch when there is none.
  std::chrono::steady_clock::time_point mapChangedAt() const;
  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }

 private:
  std::shared_ptr<const conf::Config> config_;
  std::vector<std::unique_ptr<Backend>> backends_;
  mutable std::mutex dyn_mu_;
  std::shared_ptr<const RouteTable> table_;
  // table_ indexed by lower-cased key, built once per setTable (route() runs per login
  // and per RCPT): a user@domain key (the last one wins), a domain (the first wins), "*".
  struct TableIndex {
    std::unordered_map<std::string, const RouteEntry*> users;
    std::unordered_map<std::string, const RouteEntry*> domains;
    const RouteEntry* star = nullptr;
  };
  std::shared_ptr<const TableIndex> index_;  // guarded by dyn_mu_; points into table_
  struct AdHoc {
    conf::BackendConfig config;
    std::unique_ptr<Backend> backend;
  };
  std::vector<std::unique_ptr<AdHoc>> adhoc_;  // guarded by dyn_mu_
  struct Entry {
    std::string domain;  // lower-case
    Route route;
  };
  std::vector<Entry> entries_;
  Route default_;
};

// Probes every backend that has a port for `protocol_ports` (imap, pop3, smtp or
// lmtp: the first configured in that order): connect and read the greeting line
// within health.timeout, every health.interval. Runs on its own thread.
//
// A greeting starting with "* OK" (IMAP), "+OK" (POP3) or "220" (SMTP/LMTP) means up;
// anything else, a refused or timed-out connect, or no line within the timeout means
// down. A backend with tls: implicit is probed with a TCP connect only (no TLS
// handshake, so no greeting is read). One failed probe marks a backend down, one
// good probe marks it up; each transition is logged ("backend down" with the reason,
// "backend up"). A backend with no port configured is not probed and stays up.
// Probes run one after another on the checker's thread; stop() interrupts a probe in
// progress within ~100 ms.
class HealthChecker {
 public:
  explicit HealthChecker(Router& router);
  ~HealthChecker();  // stops and joins
  void start();
  void stop();
  // Runs one probe synchronously (tests). `why` (optional) receives the reason of a
  // failure.
  static bool probe(const conf::BackendConfig& backend, std::string* why);
  // The port probed: the first non-zero of ports.imap, pop3, smtp, lmtp (0 = none).
  static uint16_t probePort(const conf::BackendConfig& backend);

 private:
  static bool probe(const conf::BackendConfig& backend, std::string* why, const std::atomic<bool>* stop);
  void run();
  void checkOne(Backend& backend);

  Router& router_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace mailgate::routing
