#include "filters/scan_result.h"

#include <algorithm>

namespace mailgate::filters {

namespace {
constexpr size_t kMaxLine = 998;
constexpr size_t kMaxToken = 64;

bool tokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.' || c == '(' || c == ')';
}

std::string token(std::string_view s) {
  std::string out(s.substr(0, kMaxToken));
  for (char& c : out)
    if (!tokenChar(c)) c = '_';
  if (out.empty()) out = "_";
  return out;
}
}  // namespace

void recordScanResult(SessionFacts& facts, std::string_view scanner, std::string_view outcome) {
  auto it = std::find_if(facts.scan_results.begin(), facts.scan_results.end(),
                         [&](const auto& r) { return r.first == scanner; });
  if (it != facts.scan_results.end())
    it->second.assign(outcome);
  else
    facts.scan_results.emplace_back(std::string(scanner), std::string(outcome));
}

std::string formatScanHeader(const SessionFacts& facts) {
  if (facts.scan_results.empty()) return {};
  std::string out(kScanHeaderName);
  out += ": ";
  const size_t start = out.size();
  for (const auto& [scanner, outcome] : facts.scan_results) {
    std::string item = token(scanner) + "=" + token(outcome);
    const size_t sep = out.size() > start ? 2 : 0;
    if (out.size() + sep + item.size() > kMaxLine - 5) {
      out += out.size() > start ? "; ..." : "...";
      break;
    }
    if (sep) out += "; ";
    out += item;
  }
  return out;
}

std::string_view scanOutcomeOf(const Verdict& v) {
  if (!v.scan_outcome.empty()) return v.scan_outcome;
  switch (v.action) {
    case Action::kContinue:
      return v.replacement ? std::string_view("modified") : kScanClean;
    case Action::kAddHeader:
      return "tagged";
    case Action::kQuarantine:
      return "quarantined";
    case Action::kReject:
    case Action::kClose:
      return "rejected";
    case Action::kReply:
      return v.code >= 500 ? std::string_view("rejected") : kScanErrorScanner;
    case Action::kTempfail:
    case Action::kPending:
    case Action::kDelay:
      return kScanErrorScanner;
  }
  return kScanErrorScanner;
}

}  // namespace mailgate::filters
