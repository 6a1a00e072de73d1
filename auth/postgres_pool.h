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
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "auth/directory.h"
#include "auth/postgres_query.h"
#include "conf/config.h"
#include "gateway/core/result.h"

// libpq's handles (libpq-fe.h: PGconn, PGresult), declared here so that includers
// need not find libpq's headers.
struct pg_conn;
struct pg_result;

namespace mailgate::auth::pg {

using Clock = std::chrono::steady_clock;

// conninfo with connect_timeout (seconds, at least 2: libpq's minimum) added when the
// operator did not set one. Works for "key=value" strings and postgresql:// URIs.
std::string withConnectTimeout(const std::string& conninfo, conf::Duration timeout);

// A libpqxx connection whose PGconn the prepared-statement path below reaches.
// libpqxx 6 takes ownership of a PGresult only after it asked the connection for
// its client encoding, and that throws broken_connection when the server went away
// during the query (pg_terminate_backend, a crash, a failover): the result libpq
// made is then lost (LeakSanitizer). So the statements of the pool's queries run on
// libpq directly (prepare, execPrepared), with the result owned from the start.
class Connection : public pqxx::connection_base {
 public:
  explicit Connection(const std::string& conninfo);
  ~Connection() noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // The PGconn libpqxx currently has (null when closed). For prepare/execPrepared.
  pg_conn* raw() const noexcept { return policy_.conn(); }
  // Counts the PGconns made (libpqxx may reconnect a broken connection by itself):
  // a statement is prepared on the server of the generation that prepared it only.
  uint64_t generation() const noexcept { return policy_.generation(); }

  // The statements defined with prepare(): sql, and the generation that prepared it
  // (0: none yet).
  struct Statement {
    std::string sql;
    uint64_t prepared_in = 0;
  };
  std::map<std::string, Statement, std::less<>>& statements() { return statements_; }

 private:
  // connect_direct, remembering the handle it made (libpqxx's is private).
  class Policy : public pqxx::connect_direct {
   public:
    explicit Policy(const std::string& opts) : connect_direct(opts) {}
    handle do_startconnect(handle orig) override;
    handle do_disconnect(handle orig) noexcept override;
    pg_conn* conn() const noexcept { return conn_; }
    uint64_t generation() const noexcept { return generation_; }

   private:
    pg_conn* conn_ = nullptr;
    uint64_t generation_ = 0;
  };

  std::string options_;  // before policy_, which refers to it
  Policy policy_;
  std::map<std::string, Statement, std::less<>> statements_;
};

// The rows of one statement: owns the PGresult (PQclear on every path). Values are
// text; row and column are within rows() and columns().
class Rows {
 public:
  explicit Rows(pg_result* r) : r_(r) {}
  bool empty() const { return rows() == 0; }
  int rows() const;
  int columns() const;
  // The index of the column named `name` (case-insensitive), or -1.
  int column(std::string_view name) const;
  unsigned columnType(int col) const;
  bool isNull(int row, int col) const;
  std::string_view text(int row, int col) const;
  // Rows an INSERT, UPDATE or DELETE touched (PQcmdTuples; 0 for other statements).
  uint64_t affected() const;
  const pg_result* result() const { return r_.get(); }

 private:
  struct Clear {
    void operator()(pg_result* r) const;
  };
  std::unique_ptr<pg_result, Clear> r_;
};

// Defines `sql` as the statement `name` of c. As with libpqxx's prepare(), the server
// prepares it when it is first run, so a statement whose tables are missing fails
// only where it is used. Redefining a name replaces it (prepared again on next use).
void prepare(Connection& c, const std::string& name, const std::string& sql);

// Runs the statement `name` (prepared on the server first if it is not yet) with text
// parameters (none is NULL); each result is owned before anything can throw. Throws
// pqxx::broken_connection when the connection is gone, pqxx::sql_error (with the
// SQLSTATE) when the server refuses, pqxx::usage_error for an undefined name.
Rows execPrepared(Connection& c, const std::string& name, const std::vector<std::string>& params);

// A parameter of exec(): text, or bytes sent in binary format (a bytea value). The
// value is read during the call only.
struct Value {
  Value(const std::string& v) : value(v), binary(false) {}  // NOLINT: implicit, as a text value
  Value(const char* v) : value(v), binary(false) {}         // NOLINT
  Value(std::string_view v, bool bytes) : value(v), binary(bytes) {}
  std::string_view value;
  bool binary;
};

// Runs sql ($1... for params) on libpq with each result owned before anything can
// throw, as execPrepared: the stores' statements go this way, not through libpqxx's
// exec, which loses the result when the connection breaks during the statement.
// Throws as execPrepared does.
Rows exec(Connection& c, const std::string& sql, const std::vector<Value>& params = {});

// BEGIN on construction; commit() ends it. Left without commit() (an exception), it
// rolls back if the connection is still up (the pool drops a connection that threw).
class Transaction {
 public:
  explicit Transaction(Connection& c);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Connection& c_;
  bool open_ = true;
};

// The bytes of a bytea column in text form ("\x" and hex digits).
std::string bytea(std::string_view text);

// Opens a connection and sets statement_timeout for the session. Throws pqxx errors.
std::unique_ptr<Connection> connect(const std::string& conninfo, conf::Duration statement_timeout);

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
bool staleTarget(pqxx::connection_base& c, Target target);

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
       std::function<void(Connection&)> on_connect);
  ~Pool();

  // Ok or the reason of the failure (for the log; the caller answers kTempFail).
  Result<bool> run(const std::function<void(Connection&)>& fn);

  uint64_t connects() const;
  uint64_t failures() const;

 private:
  struct Slot {
    std::unique_ptr<Connection> conn;
    bool busy = false;
  };

  std::string conninfo_;
  conf::Duration timeout_;
  std::function<void(Connection&)> on_connect_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  Backoff backoff_;           // guarded by mu_
  uint64_t connects_ = 0;     // guarded by mu_
  uint64_t failures_ = 0;     // guarded by mu_
};

}  // namespace mailgate::auth::pg
