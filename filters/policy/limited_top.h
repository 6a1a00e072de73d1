#pragma once
// The addresses that hit a limit most often, for the status page: a fixed table of
// kCapacity entries (address, the last limit it hit, how often, when last), kept
// with the space-saving rule (a new address takes the entry with the smallest count
// and starts from that count + 1, so a heavy hitter is never lost to a stream of
// one-off addresses). Written only when a limit is exceeded, never per event; a
// linear scan of 64 entries under one mutex.
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "filters/policy/net_prefix.h"

namespace mailgate::filters::policy {

struct LimitedAddress {
  NetAddr addr;
  std::string limit;    // the limit it hit last
  uint64_t count = 0;   // times limited (an upper bound after a replacement)
  int64_t last_ms = 0;  // wall clock (unix ms)
};

class LimitedTop {
 public:
  static constexpr size_t kCapacity = 64;
  static constexpr size_t kMaxLimitName = 64;
  void record(const NetAddr& addr, std::string_view limit, int64_t now_ms);
  // The n entries with the highest counts, highest first (ties: the latest first).
  std::vector<LimitedAddress> top(size_t n) const;

 private:
  mutable std::mutex mu_;
  std::vector<LimitedAddress> entries_;  // at most kCapacity
};

}  // namespace mailgate::filters::policy
