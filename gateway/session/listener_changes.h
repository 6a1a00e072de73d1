#pragma once
// What a reload changes in the addresses the gateway listens on. The listening
// sockets are opened once, at start, on every reactor (and before server.user drops
// root), so a change of listeners[].listen takes a restart; a reload names each
// change so that the operator knows what the restart will do.
#include <cstdint>
#include <string>
#include <vector>

#include "conf/config.h"

namespace mailgate::session {

// The addresses of one listener, as bound (or as configured).
struct BoundListener {
  std::string name;
  std::vector<std::string> listen;
};

struct ListenerChange {
  enum class Kind { kAdded, kRemoved, kMoved };
  Kind kind = Kind::kMoved;
  std::string listener;
  std::vector<std::string> before;  // empty for kAdded
  std::vector<std::string> after;   // empty for kRemoved
  // Ports of `after` below 1024 that `before` does not have: a process that has
  // given up root (server.user) cannot bind them.
  std::vector<uint16_t> new_privileged_ports;
};

std::vector<BoundListener> boundListeners(const std::vector<conf::ListenerConfig>& listeners);

// The changes from `bound` (what the sockets listen on) to `next` (a configuration
// just read), by listener name: the order of listeners and of addresses does not count.
std::vector<ListenerChange> listenerChanges(const std::vector<BoundListener>& bound,
                                            const std::vector<conf::ListenerConfig>& next);

// "listener imap: 127.0.0.1:143 -> 127.0.0.1:1143", "listener smtps added: ...",
// "listener pop3 removed (was ...)".
std::string describe(const ListenerChange& change);

}  // namespace mailgate::session
