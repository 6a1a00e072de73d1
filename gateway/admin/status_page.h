#pragma once
// The admin endpoint's status page, the pure part: what the page shows, gathered by
// the admin thread into StatusData, rendered as one HTML page (inline CSS, no script,
// no outside asset, every value escaped) or as JSON for scripts.
//   GET /status       the page; its buttons POST forms carrying the token
//   GET /status.json  the same data
//   GET /             redirects to /status
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/policy/bans.h"
#include "filters/policy/limited_top.h"
#include "filters/quarantine.h"
#include "gateway/queue/queue_store.h"

namespace mailgate::admin {

inline constexpr size_t kStatusTopLimited = 20;
inline constexpr size_t kStatusQuarantine = 20;
inline constexpr size_t kStatusQueue = 10;
inline constexpr size_t kStatusRoutes = 50;
inline constexpr size_t kStatusBans = 200;

struct StatusData {
  std::string version;
  std::string host;
  int64_t now_unix = 0;
  int64_t started_unix = 0;
  uint64_t generation = 1;
  bool last_reload_ok = true;
  int64_t last_reload_unix = 0;  // 0 = never
  uint64_t reload_failures = 0;
  bool writable = false;  // a token is configured (else the page is read-only)
  std::string directory;  // passwd-file | postgres | http
  std::string drain_via;  // "database" (nodes table) or "process" (local override)

  struct Listener {
    std::string name, protocol, listen;  // listen: the addresses, comma-separated
    uint64_t accepted = 0;
    int64_t active = 0;
  };
  std::vector<Listener> listeners;

  struct Backend {
    std::string name, host;
    bool up = true;
    std::string state;  // active | drain | down
    bool local_override = false;
    uint64_t checks_failed = 0;
  };
  std::vector<Backend> backends;

  struct Route {
    std::string key, primary, secondary;  // failover order: primary, then secondary
    std::string source;                   // "directory" or "static"
  };
  std::vector<Route> routes;
  bool routes_truncated = false;

  std::vector<filters::policy::LimitedAddress> limited;  // highest counts first
  std::vector<filters::policy::Ban> bans;
  bool bans_truncated = false;

  bool quarantine_configured = false;
  std::string quarantine_error;                      // the store could not be read
  std::vector<filters::QuarantineEntry> quarantine;  // newest first

  bool queue_configured = false;
  std::string queue_error;                // the store could not be read
  uint64_t queue_entries = 0;
  int64_t queue_oldest_created_ms = 0;    // 0: empty
  std::vector<queue::QueueEntry> queue;   // the oldest first
};

// &, <, >, " and ' as character references; control characters (but tab) as U+FFFD.
std::string htmlEscape(std::string_view s);
// "3d 4h 5m 6s" (the largest two units shown once past a minute).
std::string formatUptime(int64_t seconds);

std::string renderStatusHtml(const StatusData& d);
std::string renderStatusJson(const StatusData& d);
// The page shown after a form's action failed or was refused (a link back to /status).
std::string renderActionPage(int code, std::string_view title, std::string_view message);

}  // namespace mailgate::admin
