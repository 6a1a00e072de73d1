#pragma once
// The routing map from PostgreSQL: a thread with its own connection that LISTENs on
// channel mailgate_routes, reloads the whole map with the `routes` (and `nodes`)
// queries on every notification and every directory.postgres.refresh (the safety
// net, and the only trigger for legacy schemas without NOTIFY), and publishes it.
//
//   routes → rows (key, primary, secondary): key "*", a domain or a full address;
//            primary/secondary a backend name or host[:port]; rows with an empty
//            key or primary are skipped.
//   nodes  → rows (name, state) with state active | drain | down. Empty = the
//            default (nodes table) when `routes` is the default too, else none.
//
// A notification reaches publish() within milliseconds of the COMMIT. Each table
// published carries changed_at (routing::RouteTable): the end of the load after a
// notification or a (re)connect, or of a refresh whose table differs from the last
// one; else the last table's. Route hints read before it lose to the map. When the
// database is unreachable the watcher reconnects with backoff (100 ms doubling to
// 1 s) and the last good table stays published; on reconnect it LISTENs again and
// reloads at once. When the conninfo asks for target_session_attrs=read-write (or
// primary), the watcher checks once a second that its server still is one and
// reconnects when it is not (an old primary fenced read-only during a switchover
// keeps serving reads, but route changes are committed, and NOTIFY sent, on the new one).
// Routes and nodes queries take no %{...} parameters.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "conf/config.h"
#include "gateway/core/result.h"
#include "routing/router.h"

namespace mailgate::auth {

// True when the node states come from the default nodes table (neither the routes
// nor the nodes query replaced): the admin endpoint's drain writes that table then.
bool usesNodesTable(const conf::DirectoryConfig& cfg);
// UPDATE nodes SET state = `state` WHERE name = `name` (state active | drain | down),
// on a connection of its own (blocking, bounded by directory.postgres.timeout). The
// table's trigger NOTIFYs every gateway's route watcher. true = changed, false = no
// such node.
Result<bool> setNodeState(const conf::DirectoryConfig& cfg, const std::string& name, const std::string& state);

class PostgresRouteWatcher {
 public:
  using Publish = std::function<void(std::shared_ptr<const routing::RouteTable>)>;

  PostgresRouteWatcher(const conf::DirectoryConfig& cfg, Publish publish);
  ~PostgresRouteWatcher();  // stops and joins
  PostgresRouteWatcher(const PostgresRouteWatcher&) = delete;
  PostgresRouteWatcher& operator=(const PostgresRouteWatcher&) = delete;

  // Checks the routes/nodes queries (no %{...} parameters) without connecting.
  static Result<bool> check(const conf::DirectoryConfig& cfg);
  // Connects, loads the table once and returns it (tests, tools). Blocking.
  static Result<std::shared_ptr<const routing::RouteTable>> loadOnce(const conf::DirectoryConfig& cfg);

  void start();
  // Blocks until the first map has been published or the first attempt has failed,
  // at most `max`; true when a map was published. The gateway calls it before it
  // takes sessions, so none is routed by routing.static for want of the map.
  bool waitFirstLoad(std::chrono::milliseconds max);
  // Prompt (the wait for a notification is 100 ms at a time; a connect attempt in
  // progress finishes first, bounded by connect_timeout); joins the thread.
  void stop();

  uint64_t reloads() const { return reloads_.load(); }
  uint64_t failures() const { return failures_.load(); }

 private:
  void run();

  conf::PostgresDirectoryConfig cfg_;
  std::string routes_sql_;
  std::string nodes_sql_;  // empty = none
  Publish publish_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> reloads_{0};
  std::atomic<uint64_t> failures_{0};
};

}  // namespace mailgate::auth
