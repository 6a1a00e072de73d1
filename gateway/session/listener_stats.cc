#include "gateway/session/listener_stats.h"

#include <deque>
#include <mutex>

namespace mailgate::session {
namespace {

struct Registry {
  std::mutex mu;
  std::deque<ListenerStats> entries;  // deque: addresses stay valid as it grows
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: reactors may outlive statics
  return *r;
}

}  // namespace

ListenerStats* listenerStats(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lk(r.mu);
  for (ListenerStats& e : r.entries)
    if (e.name == name) return &e;
  return &r.entries.emplace_back(std::string(name));
}

std::vector<const ListenerStats*> allListenerStats() {
  Registry& r = registry();
  std::lock_guard lk(r.mu);
  std::vector<const ListenerStats*> out;
  out.reserve(r.entries.size());
  for (const ListenerStats& e : r.entries) out.push_back(&e);
  return out;
}

}  // namespace mailgate::session
