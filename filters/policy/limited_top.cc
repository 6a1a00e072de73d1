#include "filters/policy/limited_top.h"

#include <algorithm>

namespace mailgate::filters::policy {

void LimitedTop::record(const NetAddr& addr, std::string_view limit, int64_t now_ms) {
  limit = limit.substr(0, kMaxLimitName);
  std::lock_guard<std::mutex> lock(mu_);
  LimitedAddress* slot = nullptr;
  for (auto& e : entries_)
    if (e.addr == addr) slot = &e;
  if (!slot && entries_.size() < kCapacity) {
    slot = &entries_.emplace_back();
    slot->addr = addr;
  } else if (!slot) {
    slot = &*std::min_element(entries_.begin(), entries_.end(), [](const auto& a, const auto& b) {
      return a.count != b.count ? a.count < b.count : a.last_ms < b.last_ms;
    });
    slot->addr = addr;  // space-saving: keeps the evicted count, then adds one
  }
  slot->limit.assign(limit);
  slot->count++;
  slot->last_ms = now_ms;
}

std::vector<LimitedAddress> LimitedTop::top(size_t n) const {
  std::vector<LimitedAddress> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = entries_;
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.count != b.count ? a.count > b.count : a.last_ms > b.last_ms;
  });
  if (out.size() > n) out.resize(n);
  return out;
}

}  // namespace mailgate::filters::policy
