#pragma once
// Per-listener counters shared by every reactor: one entry per listener name, made on
// first use and never freed (a listener removed by a reload keeps its entry, at zero
// sessions), so that the reactors can hold a pointer without a lock. Written with
// relaxed atomics from any reactor; read when /metrics or the status page is rendered.
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::session {

struct ListenerStats {
  explicit ListenerStats(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::atomic<uint64_t> accepted{0};  // connections handed to a session
  std::atomic<int64_t> active{0};     // sessions open now
  void add(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
};

// The entry for a listener name (thread-safe; the pointer stays valid for the process).
ListenerStats* listenerStats(std::string_view name);
// Every entry made so far, in the order they were made.
std::vector<const ListenerStats*> allListenerStats();

}  // namespace mailgate::session
