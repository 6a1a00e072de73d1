#include "gateway/session/listener_stats.h"

#include "gateway/session/named_registry.h"
namespace mailgate::session {

ListenerStats* listenerStats(std::string_view name) { return NamedRegistry<ListenerStats>::instance().get(name); }

std::vector<const ListenerStats*> allListenerStats() { return NamedRegistry<ListenerStats>::instance().all(); }

}  // namespace mailgate::session
