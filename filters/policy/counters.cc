#include "filters/policy/counters.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace mailgate::filters::policy {

// ---------------------------------------------------------------------------------
// KeyBuilder: two 64-bit lanes fed with the MurmurHash3 x64_128 block round (the
// second lane sees each word with different constants and rotations), finished with
// fmix64 and a cross-mix. Each part is absorbed as its length and then its bytes in
// little-endian words, so ("ab", "c") and ("a", "bc") differ. No allocation.
namespace {
constexpr uint64_t kC1 = 0x87c37b91114253d5ull;
constexpr uint64_t kC2 = 0x4cf5ad432745937full;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t fmix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

inline void absorb(uint64_t* h1, uint64_t* h2, uint64_t w) {
  uint64_t k1 = w * kC1;
  k1 = rotl(k1, 31);
  k1 *= kC2;
  *h1 ^= k1;
  *h1 = rotl(*h1, 27);
  *h1 += *h2;
  *h1 = *h1 * 5 + 0x52dce729;

  uint64_t k2 = (w ^ 0x9e3779b97f4a7c15ull) * kC2;
  k2 = rotl(k2, 33);
  k2 *= kC1;
  *h2 ^= k2;
  *h2 = rotl(*h2, 31);
  *h2 += *h1;
  *h2 = *h2 * 5 + 0x38495ab5;
}

inline uint64_t loadLe(const unsigned char* p, size_t n) {
  uint64_t w = 0;
  for (size_t i = 0; i < n; i++) w |= uint64_t{p[i]} << (8 * i);
  return w;
}
}  // namespace

KeyBuilder::KeyBuilder(uint64_t limit_id)
    : a_(fmix(limit_id ^ 0x243f6a8885a308d3ull)), b_(fmix(limit_id ^ 0x13198a2e03707344ull)) {
  absorb(&a_, &b_, limit_id);
}

KeyBuilder& KeyBuilder::add(std::string_view part) { return add(part.data(), part.size()); }

KeyBuilder& KeyBuilder::add(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  absorb(&a_, &b_, uint64_t{n});
  size_t i = 0;
  for (; i + 8 <= n; i += 8) absorb(&a_, &b_, loadLe(p + i, 8));
  if (i < n) absorb(&a_, &b_, loadLe(p + i, n - i));
  return *this;
}

CounterKey KeyBuilder::key() const {
  uint64_t h1 = a_, h2 = b_;
  h1 += h2;
  h2 += h1;
  h1 = fmix(h1);
  h2 = fmix(h2);
  h1 += h2;
  h2 += h1;
  return CounterKey{h1, h2};
}

// ---------------------------------------------------------------------------------
// GCRA, virtual-scheduling form. T = emission interval, tau = T × (burst - 1).
// One event at t conforms when t >= tat - tau; then tat = max(tat, t) + T.
// n events at once conform when the n-th would: with
//   new_tat = max(tat, t) + n × T
// they conform iff new_tat - t <= tau + T (for n = 1 this is exactly t >= tat - tau).
// So `burst` events conform at once on a fresh key, and afterwards one more every T.
// When they do not, the wait is new_tat - t - (tau + T): at t + wait they conform.
// n > burst never conforms (n × T > tau + T whatever the time): kNever.
// T is rounded up to whole microseconds, so a period never admits more than `rate`
// events beyond the burst. rate 0 = no limit: T = tau = 0, every take conforms.
namespace {
constexpr int64_t kMaxSpan = std::numeric_limits<int64_t>::max() / 4;  // keeps sums in range
}

Gcra Gcra::of(uint32_t rate, std::chrono::milliseconds period, uint32_t burst) {
  Gcra g;
  if (rate == 0) return g;
  if (burst == 0) burst = rate;
  __extension__ typedef __int128 I128;
  const I128 period_us = std::max<I128>(I128{period.count()} * 1000, 0);
  I128 t = (period_us + rate - 1) / rate;
  if (t < 1) t = 1;
  if (t > kMaxSpan) t = kMaxSpan;
  I128 tau = t * (burst - 1);
  if (tau > kMaxSpan) tau = kMaxSpan;
  g.interval_us = static_cast<int64_t>(t);
  g.tolerance_us = static_cast<int64_t>(tau);
  return g;
}

int64_t Gcra::take(int64_t* tat, int64_t now_us, uint32_t n, bool dry_run) const {
  if (interval_us == 0 || n == 0) return 0;
  // n <= burst here, so n × T <= tau + T <= 2 × kMaxSpan: no overflow.
  __extension__ typedef __int128 I128;
  if (I128{n} * interval_us > I128{tolerance_us} + interval_us) return kNever;
  const int64_t base = std::max(*tat, now_us);
  const int64_t new_tat = base + static_cast<int64_t>(n) * interval_us;
  const int64_t ahead = new_tat - now_us;  // >= n × T > 0
  const int64_t allowed = tolerance_us + interval_us;
  if (ahead > allowed) return ahead - allowed;
  if (!dry_run) *tat = new_tat;
  return 0;
}

// ---------------------------------------------------------------------------------
// CounterTable. Each shard: a slab of `cap` entries allocated once, an open-addressing
// index (linear probing, power-of-two size >= 2 × cap, slots hold slab positions,
// backward-shift deletion so no tombstones) and an intrusive doubly linked LRU list
// through the slab (head = most recently used). Entries are handed out from the slab
// until it is full; then a new key takes the least recently used entry, skipping up to
// kEvictScan entries from the tail that still hold concurrency. Nothing here
// allocates after construction.
namespace {
constexpr uint32_t kNil = std::numeric_limits<uint32_t>::max();
constexpr unsigned kEvictScan = 8;
}  // namespace

struct CounterTable::Shard {
  struct Entry {
    CounterKey key;
    CounterState st;
    uint32_t prev = kNil, next = kNil;
  };
  mutable std::mutex mu;
  std::vector<Entry> slab;
  std::vector<uint32_t> index;  // kNil = empty
  size_t mask = 0;
  uint32_t cap = 0, used = 0;
  uint32_t head = kNil, tail = kNil;
  uint64_t evictions = 0;

  explicit Shard(uint32_t capacity) : slab(capacity), cap(capacity) {
    size_t n = 4;
    while (n < size_t{capacity} * 2) n <<= 1;
    index.assign(n, kNil);
    mask = n - 1;
  }

  size_t home(const CounterKey& k) const { return static_cast<size_t>(k.lo) & mask; }

  // The index slot holding `k`, or the empty slot where it would go.
  size_t probe(const CounterKey& k) const {
    size_t i = home(k);
    while (index[i] != kNil && !(slab[index[i]].key == k)) i = (i + 1) & mask;
    return i;
  }

  void unlink(uint32_t e) {
    Entry& x = slab[e];
    if (x.prev != kNil) slab[x.prev].next = x.next; else head = x.next;
    if (x.next != kNil) slab[x.next].prev = x.prev; else tail = x.prev;
    x.prev = x.next = kNil;
  }

  void pushFront(uint32_t e) {
    Entry& x = slab[e];
    x.prev = kNil;
    x.next = head;
    if (head != kNil) slab[head].prev = e;
    head = e;
    if (tail == kNil) tail = e;
  }

  // Removes the slot at `i` from the index, shifting back later members of its cluster.
  void eraseSlot(size_t i) {
    size_t j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (index[j] == kNil) break;
      const size_t h = home(slab[index[j]].key);
      // Move j's entry into the hole at i unless its home lies cyclically in (i, j].
      const bool stays = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
      if (!stays) {
        index[i] = index[j];
        i = j;
      }
    }
    index[i] = kNil;
  }

  uint32_t pickVictim() const {
    uint32_t e = tail;
    for (unsigned n = 0; e != kNil && n < kEvictScan; n++, e = slab[e].prev)
      if (slab[e].st.concurrent == 0) return e;
    return tail;  // all of the scanned ones hold concurrency: the oldest goes anyway
  }
};

CounterTable::CounterTable(size_t capacity, unsigned shards) : capacity_(capacity == 0 ? 1 : capacity) {
  if (capacity_ > std::numeric_limits<uint32_t>::max() / 4) capacity_ = std::numeric_limits<uint32_t>::max() / 4;
  if (shards == 0) shards = 1;
  if (shards > capacity_) shards = static_cast<unsigned>(capacity_);
  shards_.reserve(shards);
  const size_t base = capacity_ / shards, extra = capacity_ % shards;
  for (unsigned i = 0; i < shards; i++)
    shards_.push_back(std::make_unique<Shard>(static_cast<uint32_t>(base + (i < extra ? 1 : 0))));
}

CounterTable::~CounterTable() = default;

CounterTable::Shard& CounterTable::shardOf(const CounterKey& key) const {
  // hi picks the shard, lo the index slot: independent bits of the key's hash.
  const uint64_t n = shards_.size();
  return *shards_[static_cast<size_t>(((key.hi >> 32) * n) >> 32)];
}

std::mutex& CounterTable::mutexOf(Shard& s) { return s.mu; }

CounterState* CounterTable::entry(Shard& s, const CounterKey& key, bool create) {
  size_t slot = s.probe(key);
  if (s.index[slot] != kNil) {
    const uint32_t e = s.index[slot];
    if (s.head != e) {
      s.unlink(e);
      s.pushFront(e);
    }
    return &s.slab[e].st;
  }
  if (!create) return nullptr;
  uint32_t e;
  if (s.used < s.cap) {
    e = s.used++;
  } else {
    e = s.pickVictim();
    s.eraseSlot(s.probe(s.slab[e].key));
    s.unlink(e);
    s.evictions++;
    slot = s.probe(key);  // the erase may have moved the empty slot
  }
  Shard::Entry& x = s.slab[e];
  x.key = key;
  x.st = CounterState{};
  s.index[slot] = e;
  s.pushFront(e);
  return &x.st;
}

CounterState CounterTable::peek(const CounterKey& key) const {
  const Shard& s = shardOf(key);
  std::lock_guard<std::mutex> lock(s.mu);
  const size_t slot = s.probe(key);
  return s.index[slot] == kNil ? CounterState{} : s.slab[s.index[slot]].st;
}

void CounterTable::release(const CounterKey& key) {
  Shard& s = shardOf(key);
  std::lock_guard<std::mutex> lock(s.mu);
  const size_t slot = s.probe(key);
  if (s.index[slot] == kNil) return;
  CounterState& st = s.slab[s.index[slot]].st;
  if (st.concurrent > 0) st.concurrent--;
}

CounterStats CounterTable::stats() const {
  CounterStats r;
  r.capacity = capacity_;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    r.entries += s->used;
    r.evictions += s->evictions;
  }
  return r;
}

}  // namespace mailgate::filters::policy
