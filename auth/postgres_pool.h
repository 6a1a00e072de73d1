#pragma once
// PostgreSQL plumbing shared by the postgres directory, the route watcher and the
// schema migrations: named query parameters (auth/postgres_query.h), connection
// options, a bounded connection pool with reconnect backoff. Includes libpqxx:
// include this header only from auth/postgres_*.cc, never from a header the rest
// of the tree sees.
#include <pqxx/pqxx>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "auth/directory.h"
#include "auth/postgres_query.h"
#include "conf/config.h"
#include "gateway/core/result.h"

namespace mailgate::auth::pg {

using Clock = std::chrono::steady_clock;

// conninfo with connect_timeout (seconds, at least 2: libpq's minimum) added when the
// operator did not set one. Works for "key=value" strings and postgresql:// URIs.
std::string withConnectTimeout(const std::string& conninfo, conf::Duration timeout);

// Opens a connection and sets statement_timeout for the session. Throws pqxx errors.
std::unique_ptr<pqxx::connection> connect(const std::string& conninfo, conf::Duration statement_timeout);

// One line for the log about a pqxx/std exception (first line only, bounded).
std::string describe(const std::exception& e);

// What the conninfo asks libpq for (target_session_attrs): any server, a writable one
// (read-write), or one not in recovery (primary). PQconninfoParse; unparsable = kAny.
enum class Target { kAny, kReadWrite, kPrimary };
Target targetOf(const std::string& conninfo);

// Whether an error means the connection no longer reaches what the conninfo points
// at, so a new connection (libpq then picks the current primary of a multi-host
// conninfo) is the cure: the connection broke, the server is shutting down or
// starting (SQLSTATE class 08, 57P01..57P03), or it refuses writes (25006: a standby,
// or an old primary fenced with default_transaction_read_only).
bool reconnectReason(const std::exception& e);

// One round trip: whether c is on a server that is not (any more) what `target` asks
// for (a fenced or demoted old primary after a switchover). kAny: false, no query.
// Throws pqxx errors.
bool staleTarget(pqxx::connection& c, Target target);

// Exponential reconnect backoff: 100 ms doubling to kMax (1 s); reset on success.
// The cap bounds how long a gateway takes to notice that the database (a promoted
// replica) answers again; an attempt costs one connect, bounded by connect_timeout.
class Backoff {
 public:
  static constexpr std::chrono::milliseconds kInitial{100};
  static constexpr std::chrono::milliseconds kMax{1000};
  bool ready(Clock::time_point now) const { return now >= next_; }
  void failed(Clock::time_point now);
  void succeeded() { delay_ = kInitial; next_ = {}; }
  Clock::time_point next() const { return next_; }

 private:
  std::chrono::milliseconds delay_{kInitial};
  Clock::time_point next_{};
};

// A bounded pool of `size` lazily made connections, used from worker threads.
// run() blocks at most `acquire_timeout` for a free slot; a slot without a
// connection connects (unless the shared backoff says the database was unreachable
// a moment ago: then it fails at once). Any exception from fn drops the connection;
// when a reused connection fails for a reconnectReason() (the server restarted or
// went away, or it is read-only now: a failover), it is replaced and fn retried
// once on the new connection (fn must be safe to run twice: a write whose COMMIT
// was lost with the connection may have committed).
class Pool {
 public:
  // on_connect runs once per new connection (prepare statements); may throw.
  Pool(std::string conninfo, std::size_t size, conf::Duration timeout,
       std::function<void(pqxx::connection&)> on_connect);
  ~Pool();

  // Ok or the reason of the failure (for the log; the caller answers kTempFail).
  Result<bool> run(const std::function<void(pqxx::connection&)>& fn);

  uint64_t connects() const;
  uint64_t failures() const;

 private:
  struct Slot {
    std::unique_ptr<pqxx::connection> conn;
    bool busy = false;
  };

  std::string conninfo_;
  conf::Duration timeout_;
  std::function<void(pqxx::connection&)> on_connect_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  Backoff backoff_;           // guarded by mu_
  uint64_t connects_ = 0;     // guarded by mu_
  uint64_t failures_ = 0;     // guarded by mu_
};

}  // namespace mailgate::auth::pg
