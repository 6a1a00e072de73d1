#include "auth/postgres_policy.h"

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "auth/postgres_policy_codec.h"
#include "auth/postgres_pool.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::auth {
namespace {

using filters::policy::Ban;
using filters::policy::NetAddr;

constexpr const char* kChannel = "mailgate_bans";
constexpr std::size_t kMaxBanRows = 1000000;
constexpr std::size_t kMaxPendingNotifies = 10000;  // more at once: reload in full instead
constexpr std::size_t kRowsPerStatement = 1000;
constexpr long kWaitMicros = 50000;
constexpr auto kCleanupEvery = std::chrono::minutes(1);
constexpr int64_t kCounterRetentionMs = 86400000;  // windows that started over a day ago

// The active process's sync: the BanTable's listener is set once per process and
// forwards to whichever sync runs now (a reload may replace it).
std::mutex g_active_mu;
PostgresPolicySync* g_active = nullptr;
std::once_flag g_listener_once;

const char* kBanColumns =
    "net::text, (extract(epoch FROM created) * 1000)::bigint, (extract(epoch FROM expires) * 1000)::bigint, "
    "level, reason, origin";

using core::wallMs;

bool banOfRow(const pqxx::row& row, Ban* out) {
  if (row[0].is_null() || !filters::policy::parseCidr(row[0].c_str(), &out->net)) return false;
  out->created_ms = row[1].is_null() ? 0 : row[1].as<int64_t>();
  out->expires_ms = row[2].is_null() ? 0 : row[2].as<int64_t>();
  out->level = row[3].is_null() ? 1 : static_cast<uint32_t>(std::max(1, row[3].as<int>()));
  out->reason = row[4].is_null() ? std::string() : row[4].c_str();
  out->origin = row[5].is_null() ? std::string() : row[5].c_str();
  return true;
}

std::string msText(int64_t ms) { return "to_timestamp(" + std::to_string(ms) + " / 1000.0)"; }

class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& c, std::vector<std::string>* pending, bool* overflow)
      : notification_receiver(c, kChannel),
        self_pid_(c.backendpid()),
        pending_(pending),
        overflow_(overflow) {}
  void operator()(const std::string& payload, int backend_pid) override {
    if (backend_pid == self_pid_) return;  // our own write: already in the local table
    if (pending_->size() >= kMaxPendingNotifies) {
      *overflow_ = true;
      return;
    }
    pending_->push_back(payload);
  }

 private:
  int self_pid_;
  std::vector<std::string>* pending_;
  bool* overflow_;
};

}  // namespace

PolicySyncStats& policySyncStats() {
  static PolicySyncStats s;
  return s;
}

std::string gatewayIdentity() { return core::hostName() + ":" + std::to_string(getpid()); }

PostgresPolicySync::PostgresPolicySync(const conf::DirectoryConfig& cfg, filters::policy::PolicyState& state,
                                       std::string gateway)
    : cfg_(cfg.postgres), state_(state), gateway_(std::move(gateway)) {}

PostgresPolicySync::~PostgresPolicySync() { stop(); }

void PostgresPolicySync::start() {
  if (thread_.joinable()) return;
  stop_ = false;
  std::call_once(g_listener_once, [this] {
    state_.bans.setListener([](const Ban& ban, bool lifted) {
      std::lock_guard<std::mutex> lock(g_active_mu);
      if (g_active) g_active->enqueue(ban, lifted);
    });
  });
  {
    std::lock_guard<std::mutex> lock(g_active_mu);
    g_active = this;
  }
  state_.cluster.store(this);
  thread_ = std::thread([this] { run(); });
}

void PostgresPolicySync::stop() {
  {
    std::lock_guard<std::mutex> lock(g_active_mu);
    if (g_active == this) g_active = nullptr;
  }
  filters::policy::ClusterCounters* self = this;
  state_.cluster.compare_exchange_strong(self, nullptr);
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
    stop_ = true;
  }
  wait_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PostgresPolicySync::add(const filters::policy::CounterKey& key, int64_t window_ms, uint32_t n) {
  std::lock_guard<std::mutex> lock(deltas_mu_);
  const Slot s{key, window_ms};
  auto it = deltas_.find(s);
  if (it != deltas_.end()) {
    it->second += n;
  } else if (deltas_.size() < kMaxPendingKeys) {
    deltas_.emplace(s, n);
  } else {
    policySyncStats().counter_dropped.fetch_add(n, std::memory_order_relaxed);
  }
}

uint64_t PostgresPolicySync::others(const filters::policy::CounterKey& key, int64_t window_ms) const {
  std::shared_lock<std::shared_mutex> lock(others_mu_);
  auto it = others_.find(Slot{key, window_ms});
  return it == others_.end() ? 0 : it->second;
}

void PostgresPolicySync::enqueue(const Ban& ban, bool lifted) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (queue_.size() >= kMaxQueue) {
    queue_.pop_front();
    policySyncStats().queue_dropped.fetch_add(1, std::memory_order_relaxed);
  }
  queue_.push_back(Op{ban, lifted});
  policySyncStats().queue.store(queue_.size(), std::memory_order_relaxed);
}

size_t PostgresPolicySync::queued() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return queue_.size();
}

void PostgresPolicySync::run() {
  using Clock = std::chrono::steady_clock;
  PolicySyncStats& stats = policySyncStats();
  const std::string conninfo = pg::withConnectTimeout(cfg_.conninfo, cfg_.timeout);
  std::unique_ptr<pg::Connection> conn;
  std::unique_ptr<Receiver> receiver;
  std::vector<std::string> pending;
  bool overflow = false;
  bool reload = true;
  pg::Backoff backoff;
  Clock::time_point next_flush{};
  Clock::time_point next_cleanup{};
  const pg::Target target = pg::targetOf(conninfo);
  std::unordered_map<Slot, Clock::time_point, SlotHash> known;  // pairs counted here lately
  bool down_logged = false;

  auto drop = [&](const std::string& why) {
    stats.errors.fetch_add(1, std::memory_order_relaxed);
    try {
      receiver.reset();
    } catch (...) {
    }
    conn.reset();
    backoff.failed(Clock::now());
    if (!down_logged) {
      log::warn("postgres policy: database unavailable, bans are enforced locally and queued",
                {{"error", why}});
      down_logged = true;
    }
  };

  // Writes the queued ban changes; on an error they go back to the front of the queue.
  auto writeQueue = [&]() {
    std::deque<Op> ops;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      ops.swap(queue_);
    }
    if (ops.empty()) return;
    try {
      pqxx::work tx(*conn);
      for (const Op& op : ops) {
        const std::string net = tx.quote(policy_wire::cidrText(op.ban.net)) + "::cidr";
        if (op.lifted) {
          tx.exec("DELETE FROM mailgate_bans WHERE net = " + net);
        } else {
          tx.exec("INSERT INTO mailgate_bans (net, created, expires, level, reason, origin) VALUES (" + net +
                  ", " + msText(op.ban.created_ms) + ", " + msText(op.ban.expires_ms) + ", " +
                  std::to_string(std::max<uint32_t>(1, op.ban.level)) + ", " + tx.quote(op.ban.reason) +
                  ", " + tx.quote(op.ban.origin) +
                  ") ON CONFLICT (net) DO UPDATE SET created = EXCLUDED.created, expires = EXCLUDED.expires, "
                  "level = EXCLUDED.level, reason = EXCLUDED.reason, origin = EXCLUDED.origin");
        }
      }
      tx.commit();
      stats.writes.fetch_add(ops.size(), std::memory_order_relaxed);
      {
        std::lock_guard<std::mutex> lock(queue_mu_);
        stats.queue.store(queue_.size(), std::memory_order_relaxed);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(queue_mu_);
      // Older changes first; the newest ones win the bound.
      while (!queue_.empty()) {
        ops.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      while (ops.size() > kMaxQueue) {
        ops.pop_front();
        stats.queue_dropped.fetch_add(1, std::memory_order_relaxed);
      }
      queue_.swap(ops);
      stats.queue.store(queue_.size(), std::memory_order_relaxed);
      throw;
    }
    // Again into the local table: a full reload may have run between the change and
    // its listener call, and our own notifications are not read back.
    for (const Op& op : ops) state_.bans.apply(op.ban, op.lifted);
  };

  auto reloadAll = [&]() {
    std::vector<Ban> bans;
    {
      pqxx::nontransaction tx(*conn);
      const pqxx::result r =
          tx.exec(std::string("SELECT ") + kBanColumns + " FROM mailgate_bans WHERE expires > now()");
      if (r.size() > kMaxBanRows)
        throw std::runtime_error("mailgate_bans holds more than 1000000 active bans");
      bans.reserve(r.size());
      for (const auto& row : r) {
        Ban b;
        if (banOfRow(row, &b)) bans.push_back(std::move(b));
      }
    }
    state_.bans.replaceAll(bans);
    // Changes made here since the queue was written are not in the table yet. (Applied
    // outside queue_mu_: the table may call its listener, which takes it, under its lock.)
    std::deque<Op> newer;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      newer = queue_;
    }
    for (const Op& op : newer) state_.bans.apply(op.ban, op.lifted);
    stats.reloads.fetch_add(1, std::memory_order_relaxed);
    log::debug("postgres policy: bans loaded", {{"bans", bans.size()}});
  };

  auto applyOne = [&](const NetAddr& net) {
    Ban b;
    bool found = false;
    {
      pqxx::nontransaction tx(*conn);
      const pqxx::result r =
          tx.exec(std::string("SELECT ") + kBanColumns +
                  " FROM mailgate_bans WHERE net = " + tx.quote(policy_wire::cidrText(net)) + "::cidr");
      found = !r.empty() && banOfRow(r[0], &b);
    }
    if (!found) {
      // A lift: keep what this gateway knows of the ban (its level, for escalation),
      // ended now.
      const int64_t now = wallMs();
      b = Ban{};
      b.net = net;
      for (const Ban& in_force : state_.bans.list(now))
        if (in_force.net == net) b = in_force;
      b.expires_ms = now;
    }
    state_.bans.apply(b, !found);
    stats.notifications.fetch_add(1, std::memory_order_relaxed);
  };

  auto flushCounters = [&]() {
    SlotMap deltas;
    {
      std::lock_guard<std::mutex> lock(deltas_mu_);
      deltas.swap(deltas_);
    }
    const auto now = Clock::now();
    try {
      if (!deltas.empty()) {
        pqxx::work tx(*conn);
        const std::string gw = tx.quote(gateway_);
        auto it = deltas.begin();
        while (it != deltas.end()) {
          std::string sql =
              "INSERT INTO mailgate_policy_counters (key, window_start, gateway, count, updated) VALUES ";
          for (size_t i = 0; i < kRowsPerStatement && it != deltas.end(); ++i, ++it) {
            if (i) sql += ", ";
            sql += "('" + policy_wire::counterKeyText(it->first.key) + "', " +
                   std::to_string(it->first.window_ms) + ", " + gw + ", " + std::to_string(it->second) +
                   ", now())";
          }
          sql +=
              " ON CONFLICT (key, window_start, gateway) DO UPDATE SET count = "
              "mailgate_policy_counters.count + "
              "EXCLUDED.count, updated = now()";
          tx.exec(sql);
        }
        tx.commit();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(deltas_mu_);
      for (const auto& [slot, n] : deltas) deltas_[slot] += n;  // counted again next time
      throw;
    }
    for (const auto& [slot, n] : deltas) known[slot] = now;
    for (auto it = known.begin(); it != known.end();) {
      if (now - it->second > kKnownFor)
        it = known.erase(it);
      else
        ++it;
    }
    SlotMap fresh;
    if (!known.empty()) {
      pqxx::nontransaction tx(*conn);
      const std::string gw = tx.quote(gateway_);
      auto it = known.begin();
      while (it != known.end()) {
        std::string sql =
            "SELECT c.key, c.window_start, sum(c.count)::bigint FROM mailgate_policy_counters c JOIN "
            "(VALUES ";
        for (size_t i = 0; i < kRowsPerStatement && it != known.end(); ++i, ++it) {
          if (i) sql += ", ";
          sql += "('" + policy_wire::counterKeyText(it->first.key) + "', " +
                 std::to_string(it->first.window_ms) + "::bigint)";
        }
        sql +=
            ") AS k (key, window_start) ON c.key = k.key AND c.window_start = k.window_start WHERE c.gateway "
            "<> " +
            gw + " GROUP BY c.key, c.window_start";
        for (const auto& row : tx.exec(sql)) {
          Slot s;
          if (!policy_wire::parseCounterKeyText(row[0].c_str(), &s.key)) continue;
          s.window_ms = row[1].as<int64_t>();
          fresh[s] = static_cast<uint64_t>(std::max<int64_t>(0, row[2].as<int64_t>()));
        }
      }
    }
    {
      std::unique_lock<std::shared_mutex> lock(others_mu_);
      others_.swap(fresh);
    }
    if (!deltas.empty() || !known.empty()) stats.flushes.fetch_add(1, std::memory_order_relaxed);
  };

  auto cleanup = [&]() {
    pqxx::nontransaction tx(*conn);
    tx.exec("DELETE FROM mailgate_policy_counters WHERE window_start < " +
            std::to_string(wallMs() - kCounterRetentionMs) + " AND updated < now() - interval '10 minutes'");
    tx.exec("DELETE FROM mailgate_bans WHERE expires < now() - interval '1 day'");
  };

  while (!stop_.load()) {
    if (!conn) {
      if (!backoff.ready(Clock::now())) {
        std::unique_lock<std::mutex> lock(wait_mu_);
        wait_cv_.wait_until(lock, std::min(backoff.next(), Clock::now() + std::chrono::milliseconds(100)),
                            [this] { return stop_.load(); });
        continue;
      }
      try {
        conn = pg::connect(conninfo, cfg_.timeout);
        receiver = std::make_unique<Receiver>(*conn, &pending, &overflow);
        backoff.succeeded();
        reload = true;  // notifications may have been missed while away
        pending.clear();
        overflow = false;
        if (down_logged) log::info("postgres policy: database reachable again", {{"queued", queued()}});
        down_logged = false;
      } catch (const std::exception& e) {
        drop(pg::describe(e));
        continue;
      }
    }
    try {
      writeQueue();
      if (overflow) {
        reload = true;
        overflow = false;
        pending.clear();
      }
      if (reload) {
        reloadAll();
        reload = false;
        pending.clear();
      }
      std::vector<std::string> notes;
      notes.swap(pending);
      for (const std::string& payload : notes) {
        const policy_wire::BanNotify n = policy_wire::parseBanNotify(payload);
        switch (n.kind) {
          case policy_wire::NotifyKind::kNet:
            applyOne(n.net);
            break;
          case policy_wire::NotifyKind::kAll:
            reloadAll();
            break;
          case policy_wire::NotifyKind::kBad:
            log::warn("postgres policy: unreadable notification on mailgate_bans, reloading the bans",
                      {{"payload", payload.substr(0, 64)}});
            reloadAll();
            break;
        }
      }
      const auto now = Clock::now();
      if (now >= next_flush) {
        next_flush = now + kFlushEvery;
        // A fenced or demoted old primary still serves LISTEN: the other gateways'
        // ban changes are NOTIFYed on the new one. Reconnect (and reload in full).
        if (pg::staleTarget(*conn, target))
          throw std::runtime_error("the server is read-only now (a failover); reconnecting to the primary");
        flushCounters();
      }
      if (now >= next_cleanup) {
        next_cleanup = now + kCleanupEvery;
        cleanup();
      }
      conn->await_notification(0, kWaitMicros);
    } catch (const std::exception& e) {
      drop(pg::describe(e));
    }
  }
  // Last chance for what is queued (a reload replacing this sync, or shutdown).
  if (conn) {
    try {
      writeQueue();
    } catch (...) {
    }
  }
  try {
    receiver.reset();
  } catch (...) {
  }
  conn.reset();
}

}  // namespace mailgate::auth
