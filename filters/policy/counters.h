#pragma once
// The policy's counters: GCRA (the generic cell rate algorithm) for rate and burst,
// plus a concurrency count, per key. A key is a 128-bit hash of (limit, key parts),
// so an entry has a fixed size. The table is bounded: `capacity` entries, split in
// shards each with its own mutex, a preallocated slab, an open-addressing index and
// a least-recently-used list; a new key takes the least recently used entry of its
// shard. Nothing allocates per event. Entries still holding concurrency are not
// evicted while another can be.
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

namespace mailgate::filters::policy {

struct CounterKey {
  uint64_t hi = 0, lo = 0;
  bool operator==(const CounterKey&) const = default;
};

// Builds a key from the limit's id and its key parts (strings, addresses).
class KeyBuilder {
 public:
  explicit KeyBuilder(uint64_t limit_id);
  KeyBuilder& add(std::string_view part);
  KeyBuilder& add(const void* data, size_t n);
  CounterKey key() const;

 private:
  uint64_t a_, b_;
};

// GCRA arithmetic, in milliseconds of a steady clock. A limit of `rate` events per
// `period` with `burst` (>= 1) events allowed at once: emission interval
// T = period / rate, tolerance tau = T × (burst - 1). State: the theoretical arrival
// time `tat`.
// rate 0 = no limit (every take conforms); burst 0 = rate. T is rounded up to whole
// microseconds. n events conform at once when max(tat, now) + n × T - now <= tau + T.
struct Gcra {
  // take()'s answer when `n` exceeds the burst: those events never conform at once.
  static constexpr int64_t kNever = INT64_MAX;
  int64_t interval_us = 0;   // T, in microseconds
  int64_t tolerance_us = 0;  // tau
  static Gcra of(uint32_t rate, std::chrono::milliseconds period, uint32_t burst);
  // Would `n` more events at `now_us` conform? If so (and !dry_run) updates *tat.
  // Returns the wait, in microseconds, until they would conform (0 = conform now).
  int64_t take(int64_t* tat, int64_t now_us, uint32_t n = 1, bool dry_run = false) const;
};

struct CounterState {
  int64_t tat_us = 0;        // GCRA theoretical arrival time
  uint32_t concurrent = 0;   // sessions holding this key
  uint32_t offences = 0;     // times the limit was exceeded (grows the tarpit; decays)
  int64_t last_offence_us = 0;
  uint64_t extra = 0;        // for the caller (the last credential hash, for distinct_credentials)
  int64_t pardoned_ms = 0;  // the last ban lift (wall ms) this entry was reset for
};

struct CounterStats {
  uint64_t entries = 0, capacity = 0, evictions = 0;
};

class CounterTable {
 public:
  explicit CounterTable(size_t capacity = 100000, unsigned shards = 16);
  ~CounterTable();
  CounterTable(const CounterTable&) = delete;
  CounterTable& operator=(const CounterTable&) = delete;

  // Runs fn(CounterState&) on the key's entry (created zeroed when absent, which may
  // evict) under the shard's lock. `fn` must not call back into the table.
  template <typename Fn>
  auto update(const CounterKey& key, Fn&& fn) {
    Shard& s = shardOf(key);
    std::lock_guard<std::mutex> lock(mutexOf(s));
    return fn(*entry(s, key, /*create=*/true));
  }
  // Reads the key's entry without creating it or touching the LRU order (explain,
  // test-policy): a copy, or a zeroed state when absent.
  CounterState peek(const CounterKey& key) const;
  // Releases one concurrency unit (no-op when the entry is gone or at zero).
  void release(const CounterKey& key);
  CounterStats stats() const;
  size_t capacity() const { return capacity_; }

 private:
  struct Shard;
  Shard& shardOf(const CounterKey& key) const;
  static std::mutex& mutexOf(Shard& s);  // Shard is complete only in counters.cc
  CounterState* entry(Shard& s, const CounterKey& key, bool create);
  size_t capacity_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace mailgate::filters::policy
