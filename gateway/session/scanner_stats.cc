#include "gateway/session/scanner_stats.h"

#include "gateway/session/named_registry.h"
namespace mailgate::session {

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

ScannerStats* scannerStats(std::string_view name) { return NamedRegistry<ScannerStats>::instance().get(name); }

std::vector<const ScannerStats*> allScannerStats() { return NamedRegistry<ScannerStats>::instance().all(); }

}  // namespace mailgate::session
