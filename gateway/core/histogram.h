#pragma once
// A fixed-bucket latency histogram for /metrics: one relaxed atomic per bucket, a sum
// and a count, written from any thread without a lock and read when scraped. The
// bounds are the same for every histogram of the process (seconds, Prometheus `le`).
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace mailgate {

class LatencyHistogram {
 public:
  static constexpr std::array<double, 12> kBoundsSeconds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                         0.5,   1,    2.5,   5,    10,  30};

  void observeMs(uint64_t ms) {
    size_t i = 0;
    while (i < kBoundsSeconds.size() && static_cast<double>(ms) > kBoundsSeconds[i] * 1000) i++;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);  // not cumulative here; summed when read
    sum_ms_.fetch_add(ms, std::memory_order_relaxed);
  }
  // Observations at or below bound i (i == kBoundsSeconds.size(): all of them).
  uint64_t cumulative(size_t i) const {
    uint64_t n = 0;
    for (size_t j = 0; j <= i && j < buckets_.size(); j++) n += buckets_[j].load(std::memory_order_relaxed);
    return n;
  }
  uint64_t count() const { return cumulative(kBoundsSeconds.size()); }
  double sumSeconds() const { return static_cast<double>(sum_ms_.load(std::memory_order_relaxed)) / 1000.0; }

 private:
  std::array<std::atomic<uint64_t>, kBoundsSeconds.size() + 1> buckets_{};  // the last: above every bound
  std::atomic<uint64_t> sum_ms_{0};
};

}  // namespace mailgate
