#pragma once
// Wall-clock time in milliseconds since the Unix epoch: what the gateway stores and
// shares (bans, quarantine and queue entries, leases), as opposed to the reactors'
// steady clock for timeouts.
#include <chrono>
#include <cstdint>

namespace mailgate::core {

inline int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace mailgate::core
