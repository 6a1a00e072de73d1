#pragma once
// The name the gateway gives itself: server.hostname when the configuration sets one,
// else the host's (gethostname, read once; "localhost" when it has none). Sessions
// take it from their runtime snapshot; what runs outside a session (ban origins,
// cluster identity, quarantine release, the status page) reads it here.
#include <string>

namespace mailgate::core {

// The configured name, or the host's. Thread-safe (a copy).
std::string hostName();
// The host's own name (gethostname).
const std::string& systemHostName();
// Sets the configured name ("" = the host's); at start and when a reload is published.
void setHostName(std::string name);

}  // namespace mailgate::core
