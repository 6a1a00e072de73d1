#pragma once
// Giving up root after the privileged ports are bound (server.user / server.group).
#include <string>
#include <sys/types.h>
#include <vector>

#include "gateway/core/result.h"

namespace mailgate::privileges {

struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;
  std::string group;
};

// Looks up user (a name or a number) and group (a name or a number; empty = the
// user's primary group).
Result<Identity> lookup(const std::string& user, const std::string& group);

// Switches the whole process (every thread: glibc applies set*id to all of them) to
// `id`: supplementary groups from the group database (initgroups), then the gid, then
// the uid. Checks the result, and that root cannot be regained; an error means the
// process must not go on.
Result<bool> switchTo(const Identity& id);

// A file the gateway opens again after start (certificates on SIGHUP, the spool, the
// log file): what it needs, and why, for the message.
struct PathNeed {
  std::string path;
  int mode;          // R_OK, W_OK, X_OK as for access(2)
  std::string what;  // "tls certificate", "server.spool_dir", ...
};

// One message per path the current identity cannot use as needed (with the
// effective ids: access(2) uses the real ones, which are the same after switchTo).
std::vector<std::string> inaccessible(const std::vector<PathNeed>& needs);

}  // namespace mailgate::privileges
