#pragma once
// The running configuration: an immutable snapshot of everything compiled from one
// config file (TLS contexts, directory, routes, health checker). Sessions hold the
// snapshot they started with; SIGHUP builds a new one and swaps it whole.
#include <atomic>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "auth/directory.h"
#include "auth/postgres_routes.h"
#include "conf/config.h"
#include "filters/filter.h"
#include "filters/policy/policy.h"
#include "filters/quarantine.h"
#include "gateway/queue/queue_store.h"
#include "gateway/core/result.h"
#include "gateway/tls/tls_context.h"
#include "routing/router.h"

namespace mailgate::auth {
class PostgresPolicySync;
}

namespace mailgate::session {

class QuarantineSweeper;
class QueueRunner;

struct Runtime {
  std::shared_ptr<const conf::Config> config;
  // The name the gateway gives itself: server.hostname, else the host's.
  std::string hostname;
  std::shared_ptr<tls::ServerTls> server_tls;                                    // null without certificates
  std::unordered_map<std::string, std::shared_ptr<tls::ClientTls>> backend_tls;  // by backend name
  std::unordered_map<std::string, std::string> master_passwords;                // login: master, by backend name
  std::shared_ptr<auth::Directory> directory;
  std::unique_ptr<routing::Router> router;
  std::unique_ptr<routing::HealthChecker> health;
  std::unique_ptr<auth::PostgresRouteWatcher> route_watcher;  // driver postgres: the routing map
  // driver postgres: bans and cluster counters shared through the database; kept
  // across reloads with the directory (stopped by the last snapshot holding it).
  std::shared_ptr<auth::PostgresPolicySync> policy_sync;
  // The session filters (policy and content hooks), in order, from the `limits`,
  // `policies` and `hooks` sections; empty when none is configured.
  // The compiled lists, GeoIP databases, limits and rules (always present: the
  // built-in limits apply without a `limits` section).
  std::shared_ptr<const filters::policy::Policy> policy;
  std::shared_ptr<const filters::FilterSet> filters = std::make_shared<filters::FilterSet>();
  // hooks.quarantine: the store (null without one) and its retention sweep; kept
  // across reloads while the section is unchanged (stopped by the last snapshot).
  std::shared_ptr<filters::QuarantineStore> quarantine;
  std::shared_ptr<QuarantineSweeper> quarantine_sweeper;
  // queue: the exception queue's store (null with store: none) and its runner; kept
  // across reloads while the section is unchanged (stopped by the last snapshot).
  std::shared_ptr<queue::QueueStore> queue;
  std::shared_ptr<QueueRunner> queue_runner;

  // Starts the background parts (health checks, route watcher) and waits, bounded
  // by one database connect and one query, for the directory's first routing map:
  // called before the snapshot is published, so that no session is routed by
  // routing.static for want of the map (at start and after every reload). If the
  // database does not answer, the snapshot goes live with routing.static and the
  // map follows when the database does.
  void startBackground();
  void stopBackground();

  ~Runtime();
  const conf::ListenerConfig* listener(const std::string& name) const;
  // Builds everything; errors name the file/section at fault. On a reload, `running`
  // is the snapshot in service: a postgres directory whose section is unchanged is
  // kept (its auth cache and connections with it: a reload during a database outage
  // does not log out the cached users), and the fresh router starts from the running
  // routing map until its own arrives. A passwd-file is always read again, an http
  // directory built again (its host name resolved again).
  static Result<std::shared_ptr<Runtime>> build(std::shared_ptr<const conf::Config> config,
                                                const Runtime* running = nullptr);
};

// The configuration's life in this process, for /metrics and the status page.
// Generation 1 is the configuration read at start; each successful SIGHUP adds one.
struct ReloadState {
  std::atomic<uint64_t> generation{1};
  std::atomic<bool> last_ok{true};        // did the last reload succeed (true before any)
  std::atomic<int64_t> last_unix{0};      // when the last reload was tried (0 = never)
  std::atomic<int64_t> started_unix{0};   // when the process started serving
  std::atomic<uint64_t> failures{0};      // reloads refused (config errors, build errors)
};
ReloadState& reloadState();

// The process-wide current snapshot (reactors read it at accept time).
std::shared_ptr<Runtime> currentRuntime();
void publishRuntime(std::shared_ptr<Runtime> rt);

}  // namespace mailgate::session
