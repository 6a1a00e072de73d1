#pragma once
// Bans: an address or a network refused at connect until its ban ends. A repeated
// ban of the same network escalates: each lasts `factor` times the last, up to `max`;
// a network not banned again within `forget` after its last ban ended starts over.
// Thread-safe: sessions on every reactor read it, the admin endpoint and the cluster
// sync (PostgreSQL) change it. Lookups by address check every banned prefix length.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "filters/policy/net_prefix.h"

namespace mailgate::filters::policy {

struct Ban {
  NetAddr net;
  int64_t created_ms = 0;   // wall clock (unix ms): bans are shared between hosts
  int64_t expires_ms = 0;
  uint32_t level = 1;       // 1 = first ban; grows with escalation
  std::string reason;       // limit or rule name, "admin", ...
  std::string origin;       // gateway (host name) that made it
};

struct BanParams {
  std::chrono::milliseconds ttl{3600000};
  double factor = 4;
  std::chrono::milliseconds max{7 * 86400000LL};
  std::chrono::milliseconds forget{86400000};
};

class BanTable {
 public:
  // Called after a ban is made or lifted here (not for ones applied from the cluster):
  // the cluster sync writes it through. Set once, before use.
  using Listener = std::function<void(const Ban& ban, bool lifted)>;
  void setListener(Listener l) { listener_ = std::move(l); }

  // Bans `net` now (escalating from its history); returns the ban in force.
  Ban ban(const NetAddr& net, const BanParams& p, std::string reason, std::string origin, int64_t now_ms);
  // Bans for exactly this long (admin, CLI); no escalation.
  Ban banFor(const NetAddr& net, std::chrono::milliseconds ttl, std::string reason, std::string origin,
             int64_t now_ms);
  // Lifts the ban on exactly this network; false when none.
  bool lift(const NetAddr& net, int64_t now_ms);
  // The ban covering `addr` at `now_ms`, if any (the longest one).
  bool find(const NetAddr& addr, int64_t now_ms, Ban* out = nullptr) const;
  // The bans in force at `now_ms`.
  std::vector<Ban> list(int64_t now_ms) const;
  // Entries not yet ended by lift() or expire() (run-out ones count until expire()).
  size_t size() const;
  // From the cluster: replace (full reload) or apply one change, without calling the listener.
  void replaceAll(const std::vector<Ban>& bans);
  void apply(const Ban& ban, bool lifted);
  // Drops ended bans whose history is past `forget` (called about once a minute).
  void expire(int64_t now_ms, std::chrono::milliseconds forget);

  // When a ban covering `addr` was last lifted (wall ms; 0 = never): the counters that
  // led to it are forgiven then, so that a lifted address is not banned again at once.
  int64_t liftedAt(const NetAddr& addr) const;

  static int64_t wallMs();

 private:
  mutable std::mutex mu_;
  std::atomic<uint32_t> lifts_{0};  // lifts recorded: liftedAt() skips the lock while 0
  Listener listener_;
  // A ban in force, or (active = false: lifted or run out) its history, kept until
  // `forget` after its end so that the next ban of the network escalates.
  struct Entry {
    Ban ban;
    bool active = true;
    int64_t lifted_ms = 0;  // when lifted (admin, CLI or the cluster); 0 = not lifted
  };
  std::vector<Entry> entries_;  // small: a linear scan per connect is cheaper than hashing every prefix
};

}  // namespace mailgate::filters::policy
