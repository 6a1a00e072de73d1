#pragma once
// Per scanner counters (clamd, ICAP, milter, HTTP hooks, DLP: every filter that records
// an outcome in SessionFacts::scan_results), kept by name for the process like
// ListenerStats. The filter chain counts each scanner's final outcome for a message and
// how long its step took, when the step ends; /metrics reads them.
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/core/histogram.h"

namespace mailgate::session {

// The outcome classes of a scan, as /metrics labels them.
enum class ScanOutcome : uint8_t {
  kClean,
  kInfected,
  kModified,
  kTagged,
  kRejected,
  kQuarantined,
  kDiscarded,
  kOversize,  // too large to scan
  kSkipped,   // circuit breaker open
  kTimeout,
  kError,  // unavailable, scanner error, internal
  kOther,
};
inline constexpr size_t kScanOutcomeCount = 12;
std::string_view scanOutcomeName(ScanOutcome o);
// The class of an outcome token of filters/scan_result.h ("clean", "error(timeout)", ...).
ScanOutcome classifyScanOutcome(std::string_view token);

struct ScannerStats {
  explicit ScannerStats(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::array<std::atomic<uint64_t>, kScanOutcomeCount> outcomes{};
  LatencyHistogram duration;  // the scanner's step at the data stage, waiting included
  void record(ScanOutcome o, uint64_t ms) {
    outcomes[static_cast<size_t>(o)].fetch_add(1, std::memory_order_relaxed);
    duration.observeMs(ms);
  }
};

// The entry for a scanner name (thread-safe; the pointer stays valid for the process).
ScannerStats* scannerStats(std::string_view name);
std::vector<const ScannerStats*> allScannerStats();

}  // namespace mailgate::session
