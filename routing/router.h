#pragma once
// Routing: which storage node serves a user, and is it up. Built from the config
// snapshot; health state is shared by all reactors (atomics) and updated by the
// HealthChecker thread.
#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "conf/config.h"

namespace mailgate::routing {

struct Backend {
  const conf::BackendConfig* config = nullptr;  // lives as long as the config snapshot
  std::atomic<bool> up{true};                   // last health-check verdict (optimistic at start)
  std::atomic<uint64_t> checks_failed{0};
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
  Route route(std::string_view user) const;
  Backend* find(std::string_view name) const;
  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }

 private:
  std::shared_ptr<const conf::Config> config_;
  std::vector<std::unique_ptr<Backend>> backends_;
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
class HealthChecker {
 public:
  explicit HealthChecker(Router& router);
  ~HealthChecker();  // stops and joins
  void start();
  void stop();
  // Runs one probe synchronously (tests).
  static bool probe(const conf::BackendConfig& backend, std::string* why);

 private:
  Router& router_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

}  // namespace mailgate::routing
