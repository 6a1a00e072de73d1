#pragma once
// The policy's state that outlives a configuration: the counters and the bans (a
// reload keeps every count and ban), and the link to the cluster (PostgreSQL) that
// shares bans and cluster-scope counters between gateways. One per process.
#include <atomic>
#include <cstdint>

#include "filters/policy/bans.h"
#include "filters/policy/counters.h"
#include "filters/policy/limited_top.h"

namespace mailgate::filters::policy {

// Cluster-scope counters (limits with `scope: cluster`): each gateway adds its own
// events to a fixed window locally, and a background task writes the sums about once
// a second to a shared table and reads back what the other gateways counted. Never a
// database round trip per event.
class ClusterCounters {
 public:
  virtual ~ClusterCounters() = default;
  // Counts n events for key in the window that starts at window_ms (unix ms).
  virtual void add(const CounterKey& key, int64_t window_ms, uint32_t n) = 0;
  // What the other gateways counted for key in that window, as of the last refresh.
  virtual uint64_t others(const CounterKey& key, int64_t window_ms) const = 0;
};

struct PolicyStats {
  std::atomic<uint64_t> limited{0};        // limits exceeded (any action)
  std::atomic<uint64_t> banned_refusals{0};  // connections refused by a ban
  std::atomic<uint64_t> bans_made{0};
  std::atomic<uint64_t> early_talkers{0};
  std::atomic<uint64_t> line_timeouts{0};
  std::atomic<uint64_t> toobig{0};          // IMAP APPEND refused by APPENDLIMIT
};

struct PolicyState {
  explicit PolicyState(size_t max_keys = 100000) : counters(max_keys) {}
  CounterTable counters;
  BanTable bans;
  PolicyStats stats;
  LimitedTop limited_top;  // the status page's most limited addresses
  std::atomic<ClusterCounters*> cluster{nullptr};  // set while a postgres directory runs
};

// The process's state, made on first use with `max_keys` (later values are ignored
// until restart).
PolicyState& policyState(size_t max_keys = 100000);

}  // namespace mailgate::filters::policy
