#include "auth/postgres_routes.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <utility>

#include "auth/postgres_directory.h"
#include "auth/postgres_pool.h"
#include "gateway/core/log.h"

namespace mailgate::auth {
namespace {

constexpr const char* kChannel = "mailgate_routes";
constexpr std::size_t kMaxRows = 1000000;
constexpr long kWaitMicros = 100000;
// How often the LISTEN connection checks that its server is still what the conninfo's
// target_session_attrs asks for (a fenced old primary keeps serving reads and LISTEN,
// but the NOTIFYs of route changes come from the new primary).
constexpr auto kTargetCheckEvery = std::chrono::seconds(1);

std::string routesSql(const conf::PostgresDirectoryConfig& p) {
  return p.queries.routes.empty() ? kDefaultRoutesQuery : p.queries.routes;
}

std::string nodesSql(const conf::PostgresDirectoryConfig& p) {
  if (!p.queries.nodes.empty()) return p.queries.nodes;
  return p.queries.routes.empty() ? kDefaultNodesQuery : std::string();
}

std::string text(const pqxx::field& f) { return f.is_null() ? std::string() : std::string(f.c_str()); }

// Runs the queries on c; throws pqxx errors. changed_at is left for the caller.
std::shared_ptr<routing::RouteTable> load(pqxx::connection_base& c, const std::string& routes_sql,
                                                const std::string& nodes_sql) {
  auto table = std::make_shared<routing::RouteTable>();
  pqxx::nontransaction tx(c);
  const pqxx::result r = tx.exec(routes_sql);
  if (r.size() > kMaxRows) throw std::runtime_error("routes query returned more than 1000000 rows");
  if (!r.empty() && r.columns() < 2) throw std::runtime_error("routes query: expected columns key, primary[, secondary]");
  table->entries.reserve(r.size());
  for (const auto& row : r) {
    routing::RouteEntry e;
    e.key = text(row[0]);
    e.primary = text(row[1]);
    if (r.columns() >= 3) e.secondary = text(row[2]);
    if (e.key.empty() || e.primary.empty()) continue;
    table->entries.push_back(std::move(e));
  }
  if (!nodes_sql.empty()) {
    const pqxx::result n = tx.exec(nodes_sql);
    if (n.size() > kMaxRows) throw std::runtime_error("nodes query returned more than 1000000 rows");
    if (!n.empty() && n.columns() < 2) throw std::runtime_error("nodes query: expected columns name, state");
    for (const auto& row : n) {
      std::string name = text(row[0]);
      if (!name.empty()) table->node_states.emplace_back(std::move(name), text(row[1]));
    }
  }
  return table;
}

class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& c, std::atomic<bool>* pending) : notification_receiver(c, kChannel), pending_(pending) {}
  void operator()(const std::string&, int) override { pending_->store(true); }

 private:
  std::atomic<bool>* pending_;
};

}  // namespace

bool usesNodesTable(const conf::DirectoryConfig& cfg) {
  return cfg.postgres.queries.routes.empty() && cfg.postgres.queries.nodes.empty();
}

Result<bool> setNodeState(const conf::DirectoryConfig& cfg, const std::string& name, const std::string& state) {
  try {
    auto conn = pg::connect(pg::withConnectTimeout(cfg.postgres.conninfo, cfg.postgres.timeout), cfg.postgres.timeout);
    pqxx::work tx(*conn);
    const pqxx::result r = tx.exec_params("UPDATE nodes SET state = $1 WHERE name = $2", state, name);
    tx.commit();
    return r.affected_rows() > 0;
  } catch (const std::exception& e) {
    return Error{"nodes: " + pg::describe(e)};
  }
}

PostgresRouteWatcher::PostgresRouteWatcher(const conf::DirectoryConfig& cfg, Publish publish)
    : cfg_(cfg.postgres), routes_sql_(routesSql(cfg.postgres)), nodes_sql_(nodesSql(cfg.postgres)),
      publish_(std::move(publish)) {}

PostgresRouteWatcher::~PostgresRouteWatcher() { stop(); }

Result<bool> PostgresRouteWatcher::check(const conf::DirectoryConfig& cfg) {
  if (routesSql(cfg.postgres).find("%{") != std::string::npos)
    return Error{"directory.postgres.queries.routes: takes no %{...} parameters"};
  if (nodesSql(cfg.postgres).find("%{") != std::string::npos)
    return Error{"directory.postgres.queries.nodes: takes no %{...} parameters"};
  return true;
}

Result<std::shared_ptr<const routing::RouteTable>> PostgresRouteWatcher::loadOnce(const conf::DirectoryConfig& cfg) {
  auto ok = check(cfg);
  if (!ok) return Error{ok.error()};
  try {
    auto conn = pg::connect(pg::withConnectTimeout(cfg.postgres.conninfo, cfg.postgres.timeout), cfg.postgres.timeout);
    return std::shared_ptr<const routing::RouteTable>(load(*conn, routesSql(cfg.postgres), nodesSql(cfg.postgres)));
  } catch (const std::exception& e) {
    return Error{"routes: " + pg::describe(e)};
  }
}

void PostgresRouteWatcher::start() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { run(); });
}

bool PostgresRouteWatcher::waitFirstLoad(std::chrono::milliseconds max) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, max, [this] { return reloads_.load() > 0 || failures_.load() > 0 || stop_.load(); });
  return reloads_.load() > 0;
}

void PostgresRouteWatcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PostgresRouteWatcher::run() {
  using Clock = std::chrono::steady_clock;
  const std::string conninfo = pg::withConnectTimeout(cfg_.conninfo, cfg_.timeout);
  const auto refresh = cfg_.refresh.count() > 0 ? cfg_.refresh : conf::Duration(30000);
  std::unique_ptr<pg::Connection> conn;
  std::unique_ptr<Receiver> receiver;
  std::atomic<bool> pending{true};
  std::shared_ptr<const routing::RouteTable> last;  // the last table published
  pg::Backoff backoff;
  Clock::time_point next_refresh{};
  Clock::time_point next_target_check{};
  const pg::Target target = pg::targetOf(conninfo);
  bool down_logged = false;

  auto drop = [&](const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++failures_;
    }
    cv_.notify_all();
    try {
      receiver.reset();
    } catch (...) {
    }
    conn.reset();
    backoff.failed(Clock::now());
    if (!down_logged) {
      log::warn("postgres routes: database unavailable, keeping the last routing map",
                {{"error", why}});
      down_logged = true;
    }
  };

  if (routes_sql_.find("%{") != std::string::npos || nodes_sql_.find("%{") != std::string::npos) {
    log::error("postgres routes: the routes and nodes queries take no %{...} parameters; not loading routes");
    return;
  }

  while (!stop_.load()) {
    if (!conn) {
      if (!backoff.ready(Clock::now())) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_until(lock, std::min(backoff.next(), Clock::now() + std::chrono::milliseconds(100)),
                       [this] { return stop_.load(); });
        continue;
      }
      try {
        conn = pg::connect(conninfo, cfg_.timeout);
        receiver = std::make_unique<Receiver>(*conn, &pending);
        backoff.succeeded();
        pending = true;  // anything may have changed while we were away
        if (down_logged) log::info("postgres routes: database reachable again");
        down_logged = false;
      } catch (const std::exception& e) {
        drop(pg::describe(e));
        continue;
      }
    }
    auto now = Clock::now();
    if (target != pg::Target::kAny && now >= next_target_check) {
      next_target_check = now + kTargetCheckEvery;
      try {
        if (pg::staleTarget(*conn, target)) {
          drop("the server is read-only now (a failover); reconnecting to the primary");
          continue;
        }
      } catch (const std::exception& e) {
        drop(pg::describe(e));
        continue;
      }
      now = Clock::now();
    }
    // A notification (or a new connection, after which notifications may have been
    // missed) may stand for a change the map does not show (the `route` query's
    // data): it always counts as a change. A refresh counts only when the map differs.
    const bool notified = pending.exchange(false);
    if (notified || now >= next_refresh) {
      try {
        auto table = load(*conn, routes_sql_, nodes_sql_);
        const auto loaded = Clock::now();  // every change this table shows committed before
        next_refresh = loaded + refresh;
        table->changed_at = notified || !last || !table->sameContent(*last) ? loaded : last->changed_at;
        last = table;
        log::debug("postgres routes: loaded", {{"routes", table->entries.size()}, {"nodes", table->node_states.size()}});
        if (publish_) publish_(std::move(table));
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++reloads_;
        }
        cv_.notify_all();
      } catch (const std::exception& e) {
        drop(pg::describe(e));
        continue;
      }
    }
    try {
      conn->await_notification(0, kWaitMicros);
    } catch (const std::exception& e) {
      drop(pg::describe(e));
    }
  }
  try {
    receiver.reset();
  } catch (...) {
  }
  conn.reset();
}

}  // namespace mailgate::auth
