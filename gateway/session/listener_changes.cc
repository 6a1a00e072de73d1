#include "gateway/session/listener_changes.h"

#include <algorithm>

namespace mailgate::session {

namespace {

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out;
}

std::vector<uint16_t> newPrivilegedPorts(const std::vector<std::string>& before,
                                         const std::vector<std::string>& after) {
  auto ports = [](const std::vector<std::string>& v) {
    std::vector<uint16_t> out;
    for (const auto& a : v) {
      conf::ListenAddress la;
      if (conf::parseListenAddress(a, &la, nullptr)) out.push_back(la.port);
    }
    return out;
  };
  const std::vector<uint16_t> had = ports(before);
  std::vector<uint16_t> out;
  for (uint16_t p : ports(after))
    if (p < 1024 && std::find(had.begin(), had.end(), p) == had.end() &&
        std::find(out.begin(), out.end(), p) == out.end())
      out.push_back(p);
  return out;
}

}  // namespace

std::vector<BoundListener> boundListeners(const std::vector<conf::ListenerConfig>& listeners) {
  std::vector<BoundListener> out;
  for (const auto& l : listeners) out.push_back({l.name, l.listen});
  return out;
}

std::vector<ListenerChange> listenerChanges(const std::vector<BoundListener>& bound,
                                            const std::vector<conf::ListenerConfig>& next) {
  std::vector<ListenerChange> out;
  for (const auto& b : bound) {
    auto it = std::find_if(next.begin(), next.end(), [&](const auto& l) { return l.name == b.name; });
    if (it == next.end()) {
      out.push_back({ListenerChange::Kind::kRemoved, b.name, b.listen, {}, {}});
    } else if (sorted(it->listen) != sorted(b.listen)) {
      out.push_back({ListenerChange::Kind::kMoved, b.name, b.listen, it->listen,
                     newPrivilegedPorts(b.listen, it->listen)});
    }
  }
  for (const auto& l : next) {
    bool known = std::any_of(bound.begin(), bound.end(), [&](const auto& b) { return b.name == l.name; });
    if (!known)
      out.push_back({ListenerChange::Kind::kAdded, l.name, {}, l.listen, newPrivilegedPorts({}, l.listen)});
  }
  return out;
}

std::string describe(const ListenerChange& c) {
  switch (c.kind) {
    case ListenerChange::Kind::kAdded:
      return "listener " + c.listener + " added: " + joined(c.after);
    case ListenerChange::Kind::kRemoved:
      return "listener " + c.listener + " removed (listening on " + joined(c.before) + ")";
    case ListenerChange::Kind::kMoved:
      break;
  }
  return "listener " + c.listener + ": " + joined(c.before) + " -> " + joined(c.after);
}

}  // namespace mailgate::session
