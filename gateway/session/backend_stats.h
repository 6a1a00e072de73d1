#pragma once
// Per storage node counters shared by every reactor, kept like ListenerStats: one entry
// per backend name (a configured backend, or an ad-hoc "host:port" from the routing
// map), made on first use and never freed, so that a reload does not reset them.
// Written with relaxed atomics; read when /metrics is rendered.
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::session {

enum class BackendFailure;
inline constexpr size_t kBackendFailureCount = 8;  // the classes of BackendFailure

struct BackendStats {
  explicit BackendStats(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::atomic<uint64_t> attempts{0};  // sessions or deliveries tried on the node (each may fail over)
  std::atomic<uint64_t> logins{0};    // IMAP/POP3 sessions relayed after the node accepted the login
  std::atomic<int64_t> active{0};     // of those, relaying now
  std::array<std::atomic<uint64_t>, kBackendFailureCount> failures{};  // by BackendFailure
  void add(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
  void failed(BackendFailure f) { add(failures[static_cast<size_t>(f)]); }
};

// The entry for a backend name (thread-safe; the pointer stays valid for the process).
BackendStats* backendStats(std::string_view name);
// Every entry made so far, in the order they were made.
std::vector<const BackendStats*> allBackendStats();

}  // namespace mailgate::session
