#include "gateway/session/scanner_stats.h"

#include <deque>
#include <mutex>

namespace mailgate::session {
namespace {

struct Registry {
  std::mutex mu;
  std::deque<ScannerStats> entries;  // deque: addresses stay valid as it grows
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: reactors may outlive statics
  return *r;
}

}  // namespace

std::string_view scanOutcomeName(ScanOutcome o) {
  switch (o) {
    case ScanOutcome::kClean: return "clean";
    case ScanOutcome::kInfected: return "infected";
    case ScanOutcome::kModified: return "modified";
    case ScanOutcome::kTagged: return "tagged";
    case ScanOutcome::kRejected: return "rejected";
    case ScanOutcome::kQuarantined: return "quarantined";
    case ScanOutcome::kDiscarded: return "discarded";
    case ScanOutcome::kOversize: return "oversize";
    case ScanOutcome::kSkipped: return "skipped";
    case ScanOutcome::kTimeout: return "timeout";
    case ScanOutcome::kError: return "error";
    case ScanOutcome::kOther: return "other";
  }
  return "other";
}

ScanOutcome classifyScanOutcome(std::string_view t) {
  if (t == "clean") return ScanOutcome::kClean;
  if (t == "infected") return ScanOutcome::kInfected;
  if (t == "modified") return ScanOutcome::kModified;
  if (t == "tagged") return ScanOutcome::kTagged;
  if (t == "rejected") return ScanOutcome::kRejected;
  if (t == "quarantined") return ScanOutcome::kQuarantined;
  if (t == "discarded") return ScanOutcome::kDiscarded;
  if (t.rfind("unscanned(", 0) == 0) return ScanOutcome::kOversize;
  if (t.rfind("skipped(", 0) == 0) return ScanOutcome::kSkipped;
  if (t == "error(timeout)") return ScanOutcome::kTimeout;
  if (t.rfind("error", 0) == 0) return ScanOutcome::kError;
  return ScanOutcome::kOther;
}

ScannerStats* scannerStats(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lk(r.mu);
  for (ScannerStats& e : r.entries)
    if (e.name == name) return &e;
  return &r.entries.emplace_back(std::string(name));
}

std::vector<const ScannerStats*> allScannerStats() {
  Registry& r = registry();
  std::lock_guard lk(r.mu);
  std::vector<const ScannerStats*> out;
  out.reserve(r.entries.size());
  for (const ScannerStats& e : r.entries) out.push_back(&e);
  return out;
}

}  // namespace mailgate::session
