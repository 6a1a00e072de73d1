#include "gateway/core/privileges.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace mailgate::privileges {
namespace {

bool allDigits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

}  // namespace

Result<Identity> lookup(const std::string& user, const std::string& group_name) {
  Identity id;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* pwp = nullptr;
  int rc = allDigits(user) ? ::getpwuid_r(static_cast<uid_t>(std::strtoul(user.c_str(), nullptr, 10)), &pw,
                                          buf.data(), buf.size(), &pwp)
                           : ::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &pwp);
  if (pwp) {
    id.uid = pw.pw_uid;
    id.gid = pw.pw_gid;
    id.user = pw.pw_name;
  } else if (allDigits(user)) {
    id.uid = static_cast<uid_t>(std::strtoul(user.c_str(), nullptr, 10));  // a uid without a passwd entry
    id.user = user;
    if (group_name.empty()) return Error{"server.user " + user + " has no passwd entry: set server.group"};
  } else {
    return Error{"server.user " + user + ": " + (rc ? std::strerror(rc) : "no such user")};
  }
  if (!group_name.empty()) {
    struct group gr{};
    struct group* grp = nullptr;
    rc = allDigits(group_name) ? ::getgrgid_r(static_cast<gid_t>(std::strtoul(group_name.c_str(), nullptr, 10)), &gr,
                                         buf.data(), buf.size(), &grp)
                          : ::getgrnam_r(group_name.c_str(), &gr, buf.data(), buf.size(), &grp);
    if (grp) {
      id.gid = gr.gr_gid;
      id.group = gr.gr_name;
    } else if (allDigits(group_name)) {
      id.gid = static_cast<gid_t>(std::strtoul(group_name.c_str(), nullptr, 10));
      id.group = group_name;
    } else {
      return Error{"server.group " + group_name + ": " + (rc ? std::strerror(rc) : "no such group")};
    }
  } else {
    struct group gr{};
    struct group* grp = nullptr;
    ::getgrgid_r(id.gid, &gr, buf.data(), buf.size(), &grp);
    id.group = grp ? gr.gr_name : std::to_string(id.gid);
  }
  if (id.uid == 0) return Error{"server.user " + user + " is root: nothing to drop"};
  return id;
}

Result<bool> switchTo(const Identity& id) {
  // Supplementary groups: the user's own from the group database, or none.
  if (::initgroups(id.user.c_str(), id.gid) != 0 && ::setgroups(1, &id.gid) != 0)
    return Error{std::string("setgroups: ") + std::strerror(errno)};
  if (::setresgid(id.gid, id.gid, id.gid) != 0) return Error{std::string("setgid: ") + std::strerror(errno)};
  if (::setresuid(id.uid, id.uid, id.uid) != 0) return Error{std::string("setuid: ") + std::strerror(errno)};
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (::getresuid(&ru, &eu, &su) != 0 || ru != id.uid || eu != id.uid || su != id.uid)
    return Error{"the user ids did not change"};
  if (::getresgid(&rg, &eg, &sg) != 0 || rg != id.gid || eg != id.gid || sg != id.gid)
    return Error{"the group ids did not change"};
  if (::setuid(0) == 0 || ::seteuid(0) == 0) return Error{"root can still be regained"};
  return true;
}

std::vector<std::string> inaccessible(const std::vector<PathNeed>& needs) {
  std::vector<std::string> out;
  for (const auto& n : needs) {
    if (n.path.empty()) continue;
    if (::access(n.path.c_str(), n.mode) == 0) continue;
    const int e = errno;
    std::string how;
    if (n.mode & R_OK) how += "read";
    if (n.mode & W_OK) how += how.empty() ? "write" : "/write";
    out.push_back(n.what + " " + n.path + ": cannot " + (how.empty() ? "use" : how) + ": " + std::strerror(e));
  }
  return out;
}

}  // namespace mailgate::privileges
