#pragma once
// Per-listener counters shared by every reactor: one entry per listener name, made on
// first use and never freed (a listener removed by a reload keeps its entry, at zero
// sessions), so that the reactors can hold a pointer without a lock. Written with
// relaxed atomics from any reactor; read when /metrics or the status page is rendered.
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/tls/tls_failure.h"

namespace mailgate::session {

struct ListenerStats {
  explicit ListenerStats(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::atomic<uint64_t> accepted{0};  // connections handed to a session
  std::atomic<int64_t> active{0};     // sessions open now
  std::atomic<uint64_t> accept_errors{0};     // failed accepts (EMFILE and the like)
  std::atomic<uint64_t> refused_capacity{0};  // accepted, then closed at once: too many sessions
  std::atomic<uint64_t> refused_policy{0};    // refused at connect by the policy (bans, limits, rules)
  std::atomic<uint64_t> tls_handshakes{0};    // client TLS handshakes completed (implicit or STARTTLS)
  std::array<std::atomic<uint64_t>, tls::kHandshakeFailureCount> tls_failures{};  // by tls::HandshakeFailure
  void add(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
  void tlsFailed(tls::HandshakeFailure f) { add(tls_failures[static_cast<size_t>(f)]); }
};

// The entry for a listener name (thread-safe; the pointer stays valid for the process).
ListenerStats* listenerStats(std::string_view name);
// Every entry made so far, in the order they were made.
std::vector<const ListenerStats*> allListenerStats();

}  // namespace mailgate::session
