#pragma once
// The policy's cluster state in PostgreSQL: bans shared by every gateway on one
// database, and the cluster-scope counters. One thread with its own connection
// (directory.postgres.conninfo, so target_session_attrs and the host list apply),
// modelled on the route watcher (auth/postgres_routes.h):
//
//   bans     On every (re)connect: LISTEN mailgate_bans, write what was queued while
//            away, then load every active row of mailgate_bans and replace the local
//            table with it (BanTable::replaceAll). Then each notification names a
//            network (auth/postgres_policy_codec.h): its row is read again and applied
//            (BanTable::apply; a missing row is a lift). Bans made or lifted here
//            reach the thread through the BanTable's listener, wait in a bounded
//            queue (kMaxQueue, the oldest dropped and counted) and are written with
//            INSERT ... ON CONFLICT (net) DO UPDATE / DELETE, whose trigger NOTIFYs
//            the other gateways. While the database is down the queue is kept and
//            the local table keeps enforcing; it is written when the database is back.
//            With target_session_attrs=read-write (or primary) in the conninfo, the
//            thread checks about once a second that its server still is one, and a
//            write refused as read-only (25006) drops the connection too: after a
//            failover it reconnects to the new primary, LISTENs there, writes the
//            queue and reloads the bans in full.
//   counters add() adds to a small map of deltas under a mutex; about once a second
//            the thread adds them to mailgate_policy_counters (key, window_start,
//            this gateway) and reads back, for the (key, window) pairs this gateway
//            counted in the last kKnownFor, the sum over the other gateways, which
//            others() answers from. Windows over a day old are deleted once a minute.
//
// While it runs, policyState().cluster points at it (null once stopped).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "conf/config.h"
#include "filters/policy/policy_state.h"

namespace mailgate::auth {

// Process-wide (a reload may replace the sync; /metrics reads these).
struct PolicySyncStats {
  std::atomic<uint64_t> queue{0};            // ban changes waiting to be written (gauge)
  std::atomic<uint64_t> queue_dropped{0};    // ban changes dropped: the queue was full
  std::atomic<uint64_t> errors{0};           // database errors (connect, query)
  std::atomic<uint64_t> reloads{0};          // full loads of the bans
  std::atomic<uint64_t> notifications{0};    // ban changes applied from other gateways
  std::atomic<uint64_t> writes{0};           // ban changes written
  std::atomic<uint64_t> flushes{0};          // counter flushes (write + read back)
  std::atomic<uint64_t> counter_dropped{0};  // counter events dropped: too many keys pending
};
PolicySyncStats& policySyncStats();

// This gateway's name in the counters table: host name and process id ("mx1:4711").
std::string gatewayIdentity();

class PostgresPolicySync final : public filters::policy::ClusterCounters {
 public:
  static constexpr size_t kMaxQueue = 10000;
  static constexpr size_t kMaxPendingKeys = 100000;
  static constexpr std::chrono::seconds kFlushEvery{1};
  static constexpr std::chrono::minutes kKnownFor{15};

  PostgresPolicySync(const conf::DirectoryConfig& cfg, filters::policy::PolicyState& state,
                     std::string gateway = gatewayIdentity());
  ~PostgresPolicySync() override;  // stops and joins
  PostgresPolicySync(const PostgresPolicySync&) = delete;
  PostgresPolicySync& operator=(const PostgresPolicySync&) = delete;

  // Starts the thread, routes the ban table's changes here and publishes the cluster
  // counters. Idempotent.
  void start();
  // Prompt (bounded by a connect attempt in progress); joins the thread.
  void stop();
  bool running() const { return thread_.joinable(); }

  // ClusterCounters
  void add(const filters::policy::CounterKey& key, int64_t window_ms, uint32_t n) override;
  uint64_t others(const filters::policy::CounterKey& key, int64_t window_ms) const override;

  // A ban made or lifted on this gateway (the BanTable listener calls it).
  void enqueue(const filters::policy::Ban& ban, bool lifted);
  size_t queued() const;
  const std::string& gateway() const { return gateway_; }

 private:
  struct Op {
    filters::policy::Ban ban;
    bool lifted = false;
  };
  struct Slot {
    filters::policy::CounterKey key;
    int64_t window_ms = 0;
    bool operator==(const Slot&) const = default;
  };
  struct SlotHash {
    size_t operator()(const Slot& s) const noexcept {
      return static_cast<size_t>(s.key.hi ^ (s.key.lo * 0x9E3779B97F4A7C15ull) ^
                                 (static_cast<uint64_t>(s.window_ms) * 0xC2B2AE3D27D4EB4Full));
    }
  };
  using SlotMap = std::unordered_map<Slot, uint64_t, SlotHash>;

  void run();

  conf::PostgresDirectoryConfig cfg_;
  filters::policy::PolicyState& state_;
  std::string gateway_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;

  mutable std::mutex queue_mu_;
  std::deque<Op> queue_;

  std::mutex deltas_mu_;
  SlotMap deltas_;
  mutable std::shared_mutex others_mu_;
  SlotMap others_;
};

}  // namespace mailgate::auth
