#pragma once
// Directory driver "file": a Dovecot passwd-file.
//
//   user[@domain]:password[:uid:gid:gecos:home:shell:extra_fields]
//
// '#' starts a comment line; blank lines are skipped; CRLF line ends are accepted.
// The password is "{SCHEME}hash" or a bare hash in the default scheme. User names
// are matched case-insensitively (ASCII). A malformed line, an unknown scheme, an
// empty password or a duplicate user is reported as "FILE:LINE: message"; such a
// user never authenticates (of duplicates, the first entry counts), and every
// other line still loads.
//
// The loaded table is an immutable snapshot; reload() builds a new one and swaps it
// whole, so authenticate() may run concurrently on any number of worker threads.
// The failure delay is the session's job, not this class's.
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "auth/directory.h"
#include "auth/password_scheme.h"

namespace mailgate::auth {

struct PasswdLoadReport {
  bool loaded = false;                // false: the file could not be read; the old snapshot stays
  std::size_t users = 0;              // users that can authenticate
  std::vector<std::string> problems;  // "FILE:LINE: message", in file order
};

class PasswdFile : public Directory {
 public:
  // default_scheme applies to passwords without a "{SCHEME}" prefix.
  explicit PasswdFile(Scheme default_scheme = Scheme::kSha512Crypt);

  // Reads path and, when it could be read, replaces the snapshot (even if some lines
  // had problems: those users are disabled). Remembers path for reload().
  PasswdLoadReport load(const std::string& path);
  // Re-reads the path given to load() (SIGHUP).
  PasswdLoadReport reload();
  // Parses text as if it were the file `name` (tests, embedded users).
  PasswdLoadReport loadText(std::string_view text, const std::string& name);

  // Thread-safe and blocking. An unknown or disabled user still costs one hash
  // verification (against another user's hash in the file's most common scheme, the
  // result ignored), so the answer time does not tell which users exist.
  AuthResult authenticate(std::string_view user, std::string_view password) override;
  // The local domains are the domains of the file's users; a mailbox is a user
  // (also one whose password line is disabled). Case-insensitive (ASCII).
  RecipientResult recipient(std::string_view address) override;
  // senderAllowed: the default rule (the sender is the login itself). A passwd-file
  // has users only, no aliases, so no other address belongs to a user.

  std::size_t size() const;  // users that can authenticate

 private:
  struct Entry {
    std::string user;  // as written in the file
    StoredHash hash;
    bool enabled = false;
  };
  struct Snapshot {
    std::unordered_map<std::string, Entry> users;  // key: lower-case user name
    std::unordered_set<std::string> domains;       // lower-case domains of the users
    StoredHash dummy;                              // verified, result ignored, for unknown users
    std::size_t enabled = 0;
  };

  std::shared_ptr<const Snapshot> snapshot() const;

  const Scheme default_scheme_;
  mutable std::mutex mu_;  // guards snapshot_ and path_
  std::shared_ptr<const Snapshot> snapshot_;
  std::string path_;
};

}  // namespace mailgate::auth
