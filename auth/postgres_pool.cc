#include "auth/postgres_pool.h"

#include <libpq-fe.h>

#include <algorithm>
#include <utility>

#include "gateway/core/ascii.h"

namespace mailgate::auth::pg {

std::string withConnectTimeout(const std::string& conninfo, conf::Duration timeout) {
  if (conninfo.find("connect_timeout") != std::string::npos) return conninfo;
  const long long secs = std::max<long long>(2, (timeout.count() + 999) / 1000);
  const std::string opt = "connect_timeout=" + std::to_string(secs);
  if (conninfo.rfind("postgresql://", 0) == 0 || conninfo.rfind("postgres://", 0) == 0)
    return conninfo + (conninfo.find('?') == std::string::npos ? "?" : "&") + opt;
  return conninfo.empty() ? opt : conninfo + " " + opt;
}

std::unique_ptr<Connection> connect(const std::string& conninfo, conf::Duration statement_timeout) {
  auto c = std::make_unique<Connection>(conninfo);
  {
    pqxx::nontransaction tx(*c);
    tx.exec("SET statement_timeout = " + std::to_string(statement_timeout.count()) +
            "; SET application_name = 'mailgate'");
  }
  return c;
}

Connection::Connection(const std::string& conninfo)
    : connection_base(policy_), options_(conninfo), policy_(options_) {
  init();
}

Connection::~Connection() noexcept { close(); }

Connection::Policy::handle Connection::Policy::do_startconnect(handle orig) {
  conn_ = connect_direct::do_startconnect(orig);
  if (conn_ != orig) ++generation_;  // libpqxx calls it again on an open connection
  return conn_;
}

Connection::Policy::handle Connection::Policy::do_disconnect(handle orig) noexcept {
  conn_ = connect_direct::do_disconnect(orig);
  return conn_;
}

void Rows::Clear::operator()(PGresult* r) const { PQclear(r); }
int Rows::rows() const { return PQntuples(r_.get()); }
int Rows::columns() const { return PQnfields(r_.get()); }
unsigned Rows::columnType(int col) const { return PQftype(r_.get(), col); }
bool Rows::isNull(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
std::string_view Rows::text(int row, int col) const {
  return {PQgetvalue(r_.get(), row, col), static_cast<std::size_t>(PQgetlength(r_.get(), row, col))};
}

uint64_t Rows::affected() const {
  const char* n = PQcmdTuples(r_.get());
  uint64_t v = 0;
  for (; n && *n >= '0' && *n <= '9'; ++n) v = v * 10 + static_cast<uint64_t>(*n - '0');
  return v;
}
int Rows::column(std::string_view name) const {
  for (int i = 0; i < columns(); ++i) {
    const char* n = PQfname(r_.get(), i);
    if (n && ascii::lower(n) == ascii::lower(name)) return i;
  }
  return -1;
}

namespace {

// Throws for a result that is not rows or a command's success (r may be null:
// out of memory, or the connection is gone). Leaves r to the caller's holder.
void check(PGconn* conn, const PGresult* r, const std::string& what) {
  const ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) return;
  std::string msg = r ? PQresultErrorMessage(r) : "";
  if (msg.empty()) msg = PQerrorMessage(conn);
  if (PQstatus(conn) == CONNECTION_BAD) throw pqxx::broken_connection{msg};
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  throw pqxx::sql_error{msg, what, state};
}

PGconn* open(Connection& c) {
  PGconn* conn = c.raw();
  if (!conn || PQstatus(conn) == CONNECTION_BAD) throw pqxx::broken_connection{"connection is closed"};
  return conn;
}

}  // namespace

void prepare(Connection& c, const std::string& name, const std::string& sql) {
  c.statements()[name] = Connection::Statement{sql, 0};
}

Rows execPrepared(Connection& c, const std::string& name, const std::vector<std::string>& params) {
  PGconn* conn = open(c);
  auto it = c.statements().find(name);
  if (it == c.statements().end()) throw pqxx::usage_error{"unknown prepared statement " + name};
  if (it->second.prepared_in != c.generation()) {
    const Rows made(PQprepare(conn, name.c_str(), it->second.sql.c_str(), 0, nullptr));
    check(conn, made.result(), "[PREPARE " + name + "]");
    it->second.prepared_in = c.generation();
  }
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const std::string& p : params) values.push_back(p.c_str());
  Rows r(PQexecPrepared(conn, name.c_str(), static_cast<int>(values.size()), values.data(), nullptr, nullptr, 0));
  check(conn, r.result(), "[EXECUTE " + name + "]");
  return r;
}

Rows exec(Connection& c, const std::string& sql, const std::vector<Value>& params) {
  PGconn* conn = open(c);
  // Text values must end with NUL: copied; binary ones are passed with their length.
  std::vector<std::string> text;
  text.reserve(params.size());
  std::vector<const char*> values;
  std::vector<int> lengths, formats;
  for (const Value& p : params) {
    if (p.binary) {
      values.push_back(p.value.data());
    } else {
      text.emplace_back(p.value);
      values.push_back(text.back().c_str());
    }
    lengths.push_back(static_cast<int>(p.value.size()));
    formats.push_back(p.binary ? 1 : 0);
  }
  Rows r(PQexecParams(conn, sql.c_str(), static_cast<int>(params.size()), nullptr, values.data(),
                      lengths.data(), formats.data(), 0));
  check(conn, r.result(), sql.substr(0, 60));
  return r;
}

Transaction::Transaction(Connection& c) : c_(c) { exec(c_, "BEGIN"); }

Transaction::~Transaction() {
  if (!open_) return;
  PGconn* conn = c_.raw();
  if (conn && PQstatus(conn) == CONNECTION_OK) PQclear(PQexec(conn, "ROLLBACK"));
}

void Transaction::commit() {
  open_ = false;
  exec(c_, "COMMIT");
}

std::string bytea(std::string_view text) {
  auto nibble = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
  };
  std::string out;
  if (text.size() < 2 || text[0] != '\\' || text[1] != 'x') return out;
  out.reserve((text.size() - 2) / 2);
  for (size_t i = 2; i + 1 < text.size(); i += 2) {
    const int hi = nibble(text[i]), lo = nibble(text[i + 1]);
    if (hi < 0 || lo < 0) break;
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

std::string describe(const std::exception& e) {
  std::string s = e.what();
  const std::size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  if (s.size() > 300) s.resize(300);
  return s;
}

Target targetOf(const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (err) PQfreemem(err);
  if (!opts) return Target::kAny;
  Target t = Target::kAny;
  for (PQconninfoOption* o = opts; o->keyword; ++o) {
    if (std::string_view(o->keyword) != "target_session_attrs" || !o->val) continue;
    const std::string_view v = o->val;
    if (v == "read-write") t = Target::kReadWrite;
    if (v == "primary") t = Target::kPrimary;
  }
  PQconninfoFree(opts);
  return t;
}

bool reconnectReason(const std::exception& e) {
  if (dynamic_cast<const pqxx::broken_connection*>(&e)) return true;
  const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
  if (!sql) return false;
  const std::string& state = sql->sqlstate();
  return state == "25006" || state.rfind("08", 0) == 0 || state == "57P01" || state == "57P02" ||
         state == "57P03";
}

bool staleTarget(pqxx::connection_base& c, Target target) {
  if (target == Target::kAny) return false;
  pqxx::nontransaction tx(c);
  const pqxx::row r = tx.exec("SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'")[0];
  if (target == Target::kPrimary) return r[0].as<bool>();
  return r[0].as<bool>() || r[1].as<bool>();
}

void Backoff::failed(Clock::time_point now) {
  next_ = now + delay_;
  delay_ = std::min(delay_ * 2, kMax);
}

Pool::Pool(std::string conninfo, std::size_t size, conf::Duration timeout,
           std::function<void(Connection&)> on_connect)
    : conninfo_(std::move(conninfo)), timeout_(timeout), on_connect_(std::move(on_connect)),
      slots_(std::max<std::size_t>(1, size)) {}

Pool::~Pool() = default;

Result<bool> Pool::run(const std::function<void(Connection&)>& fn) {
  std::unique_lock<std::mutex> lock(mu_);
  std::size_t idx = slots_.size();
  auto pick = [&] {
    // Prefer a slot that already has a connection.
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].busy && slots_[i].conn) return idx = i, true;
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].busy) return idx = i, true;
    return false;
  };
  if (!cv_.wait_for(lock, timeout_, pick)) {
    ++failures_;
    return Error{"no free database connection within " + std::to_string(timeout_.count()) + "ms"};
  }
  slots_[idx].busy = true;
  std::unique_ptr<Connection> conn = std::move(slots_[idx].conn);
  lock.unlock();

  auto finish = [&](std::unique_ptr<Connection> c, bool failed) {
    std::lock_guard<std::mutex> g(mu_);
    slots_[idx].conn = std::move(c);
    slots_[idx].busy = false;
    if (failed) ++failures_;
    cv_.notify_one();
  };

  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = conn != nullptr;
    if (!conn) {
      bool ready = false;
      {
        std::lock_guard<std::mutex> g(mu_);
        ready = backoff_.ready(Clock::now());
      }
      if (!ready) {
        finish(nullptr, true);
        return Error{"database unreachable (waiting to reconnect)"};
      }
      try {
        conn = connect(conninfo_, timeout_);
        if (on_connect_) on_connect_(*conn);
        std::lock_guard<std::mutex> g(mu_);
        backoff_.succeeded();
        ++connects_;
      } catch (const std::exception& e) {
        conn.reset();
        {
          std::lock_guard<std::mutex> g(mu_);
          backoff_.failed(Clock::now());
        }
        finish(nullptr, true);
        return Error{"connect: " + describe(e)};
      }
    }
    try {
      fn(*conn);
      finish(std::move(conn), false);
      return true;
    } catch (const std::exception& e) {
      conn.reset();
      const bool reconnect = reconnectReason(e);
      // The server went away or turned read-only since last use (a failover): one fresh try.
      if (reconnect && reused && attempt == 0) continue;
      finish(nullptr, true);
      if (dynamic_cast<const pqxx::broken_connection*>(&e)) return Error{"connection lost: " + describe(e)};
      return Error{describe(e)};
    }
  }
  finish(nullptr, true);
  return Error{"connection lost"};
}

uint64_t Pool::connects() const {
  std::lock_guard<std::mutex> g(mu_);
  return connects_;
}

uint64_t Pool::failures() const {
  std::lock_guard<std::mutex> g(mu_);
  return failures_;
}

}  // namespace mailgate::auth::pg
