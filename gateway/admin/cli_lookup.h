#pragma once
// The configuration's offline tools (no listener opened; nothing written):
//   mailgate --check-config FILE          every problem as FILE:LINE:COL: message, or "ok"
//   mailgate --dump-config FILE           the effective configuration, defaults filled in
//   mailgate --config FILE --auth-test USER [--listener L]   a login's directory look-up (doveadm auth test)
//   mailgate --config FILE --route ADDRESS    the node and failover order, and why (postmap -q)
// Each returns the process exit code (documented in docs/mailgate.8).
#include <string>

namespace mailgate::admin {

int checkConfigMain(const std::string& path);
int dumpConfigMain(const std::string& path);
// Exit: 0 ok, 1 refused (bad password, unknown user), 3 cannot tell (directory
// unavailable, configuration errors).
// listener: the listener the login is made on (empty = the first IMAP or POP3 one).
int authTestMain(const std::string& path, const std::string& user, const std::string& listener);
// Exit: 0 routed, 1 no route, 3 cannot tell (configuration errors).
int routeMain(const std::string& path, const std::string& address);

}  // namespace mailgate::admin
