#include "gateway/session/backend_stats.h"

#include "gateway/session/named_registry.h"
#include "gateway/session/session.h"

namespace mailgate::session {
namespace {

static_assert(static_cast<size_t>(BackendFailure::kInternal) + 1 == kBackendFailureCount);

}  // namespace

BackendStats* backendStats(std::string_view name) { return NamedRegistry<BackendStats>::instance().get(name); }

std::vector<const BackendStats*> allBackendStats() { return NamedRegistry<BackendStats>::instance().all(); }

}  // namespace mailgate::session
