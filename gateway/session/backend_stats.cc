#include "gateway/session/backend_stats.h"

#include <deque>
#include <mutex>

#include "gateway/session/session.h"

namespace mailgate::session {
namespace {

static_assert(static_cast<size_t>(BackendFailure::kInternal) + 1 == kBackendFailureCount);

struct Registry {
  std::mutex mu;
  std::deque<BackendStats> entries;  // deque: addresses stay valid as it grows
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: reactors may outlive statics
  return *r;
}

}  // namespace

BackendStats* backendStats(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lk(r.mu);
  for (BackendStats& e : r.entries)
    if (e.name == name) return &e;
  return &r.entries.emplace_back(std::string(name));
}

std::vector<const BackendStats*> allBackendStats() {
  Registry& r = registry();
  std::lock_guard lk(r.mu);
  std::vector<const BackendStats*> out;
  out.reserve(r.entries.size());
  for (const BackendStats& e : r.entries) out.push_back(&e);
  return out;
}

}  // namespace mailgate::session
