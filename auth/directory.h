#pragma once
// The directory answers "may this user log in with this password?" (and, for the
// drivers that know, "where does this user live?"). Calls are blocking and run on
// the worker pool, never on a reactor thread.
//
// Who is asking is the session's filters::SessionFacts (a copy taken on the session's
// reactor): the values behind %{client_ip}, %{protocol} in queries and the Client-IP,
// Auth-Protocol, Auth-Login-Attempt, Auth-SSL, Auth-SMTP-Helo/-From headers of the
// http driver; route_map for the auth cache.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/session_facts.h"

namespace mailgate::auth {

enum class Verdict {
  kOk,
  kBadPassword,
  kUnknownUser,
  kTempFail,  // directory unavailable: the client gets a temporary failure
};

// Where the directory says the user lives. Each is a backend name from the config
// or "host[:port]" (the port then applies to the session's protocol).
struct RouteHint {
  std::string primary;
  std::string secondary;  // may be empty
};

struct AuthResult {
  Verdict verdict = Verdict::kTempFail;
  std::string user;                 // canonical user name (as stored), set when kOk
  std::optional<RouteHint> route;   // overrides the routing map for this session
  std::chrono::milliseconds wait{0};  // extra delay before a failure reply (auth_http Auth-Wait)
  std::string reason;               // for the log: why it failed (never the password)
  // Credentials to present to the storage node instead of the client's (auth_http
  // Auth-User/Auth-Pass); unset = replay the client's.
  std::optional<std::string> backend_user;
  std::optional<std::string> backend_password;
};

// Is this address a mailbox we deliver to? (The MX asks at RCPT time.)
enum class RecipientResult {
  kLocal,           // a local domain and an existing mailbox (or alias)
  kUnknownMailbox,  // a local domain, no such mailbox: 550 5.1.1
  kForeignDomain,   // not one of our domains: relaying, 550 5.7.1
  kTempFail,        // cannot tell now (directory down, driver without support): 451 4.3.0
};

// A recipient check's answer with the mailbox whose route applies: an alias is
// routed to the node of its target. Empty mailbox = the address itself.
struct RecipientAnswer {
  RecipientResult result = RecipientResult::kTempFail;
  std::string mailbox;
};

// May an authenticated user send with this envelope sender? (Submission asks at MAIL.)
enum class SenderResult {
  kAllowed,   // the user's own address or one of its aliases
  kDenied,    // someone else's address: 553 5.7.1
  kTempFail,  // cannot tell now (directory down): 451 4.3.0
};

// The default sender rule of drivers that know no aliases: the sender is the login
// name itself (local part and domain compared without regard to case).
SenderResult senderIsLogin(std::string_view user, std::string_view address);

class Directory {
 public:
  virtual ~Directory() = default;
  // Thread-safe; blocking (may hash for tens of milliseconds).
  virtual AuthResult authenticate(std::string_view user, std::string_view password) = 0;
  // The same with the session's facts; drivers that use none of them ignore them.
  virtual AuthResult authenticate(std::string_view user, std::string_view password,
                                  const filters::SessionFacts& /*facts*/) {
    return authenticate(user, password);
  }
  // Thread-safe; blocking (may query a database). `address` is local@domain with
  // the local part unquoted. Drivers that cannot answer say kTempFail.
  virtual RecipientResult recipient(std::string_view /*address*/) { return RecipientResult::kTempFail; }
  // The same with the session's facts (client address, TLS, HELO, envelope sender);
  // drivers that use none of them ignore them.
  virtual RecipientResult recipient(std::string_view address, const filters::SessionFacts& /*facts*/) {
    return recipient(address);
  }
  // The same with the mailbox to route by (drivers that know aliases say it).
  virtual RecipientAnswer lookupRecipient(std::string_view address, const filters::SessionFacts& facts) {
    return RecipientAnswer{recipient(address, facts), {}};
  }
  // Thread-safe; blocking. `user` is the canonical name authenticate() returned,
  // `address` the envelope sender as local@domain (local part unquoted, never empty:
  // the null sender is not asked about).
  virtual SenderResult senderAllowed(std::string_view user, std::string_view address) {
    return senderIsLogin(user, address);
  }
  // Counters for the log and /metrics, e.g. "cache_hits=3 cache_misses=7"; empty if none.
  virtual std::string statsText() const { return {}; }
};

}  // namespace mailgate::auth
