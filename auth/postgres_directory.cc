#include "auth/postgres_directory.h"

#include <atomic>
#include <optional>
#include <utility>
#include <vector>

#include "auth/password_scheme.h"
#include "auth/postgres_pool.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"

namespace mailgate::auth {

const char* const kDefaultPasswordQuery =
    "SELECT m.password, (m.active AND d.active) AS active, m.address AS user "
    "FROM mailboxes m JOIN domains d ON d.name = m.domain "
    "WHERE lower(m.address) = %{user}";
const char* const kDefaultRecipientQuery =
    "SELECT m.address FROM mailboxes m JOIN domains d ON d.name = m.domain "
    "WHERE lower(m.address) = %{user} AND m.active AND d.active "
    "UNION ALL SELECT a.target FROM aliases a WHERE lower(a.address) = %{user} AND a.active LIMIT 1";
const char* const kDefaultDomainQuery = "SELECT 1 FROM domains WHERE lower(name) = %{domain} AND active";
const char* const kDefaultSenderQuery =
    "SELECT 1 WHERE %{address}::text = %{user}::text "
    "UNION ALL SELECT 1 FROM aliases a WHERE lower(a.address) = %{address} AND lower(a.target) = %{user} "
    "AND a.active LIMIT 1";
const char* const kDefaultRoutesQuery =
    "SELECT domain AS key, primary_node AS primary, secondary_node AS secondary FROM routes "
    "UNION ALL "
    "SELECT address, route_primary, route_secondary FROM mailboxes WHERE route_primary IS NOT NULL";
const char* const kDefaultNodesQuery = "SELECT name, state FROM nodes";

namespace {

constexpr unsigned kBoolOid = 16;

bool falsy(std::string_view v) {
  const std::string l = ascii::lower(v);
  return l == "f" || l == "false" || l == "0" || l == "no" || l == "off" || l == "n";
}

// What the password query found, copied out of pqxx while the connection is held.
struct PasswordRow {
  bool found = false;
  bool has_hash = false;
  bool active = true;
  std::string hash;
  std::string user;
  std::optional<RouteHint> route;
};

// Row 0 of r.
std::optional<RouteHint> routeFromRow(const pg::Rows& r, int primary_col, int secondary_col) {
  if (primary_col < 0) return std::nullopt;
  if (r.isNull(0, primary_col) || r.text(0, primary_col).empty()) return std::nullopt;
  RouteHint hint;
  hint.primary = r.text(0, primary_col);
  if (secondary_col >= 0 && !r.isNull(0, secondary_col)) hint.secondary = r.text(0, secondary_col);
  return hint;
}

}  // namespace

struct PostgresDirectory::Impl {
  conf::PostgresDirectoryConfig cfg;
  Scheme default_scheme = Scheme::kSha512Crypt;
  pg::CompiledQuery password;
  pg::CompiledQuery route;
  pg::CompiledQuery recipient;
  pg::CompiledQuery domain;
  pg::CompiledQuery sender;
  std::unique_ptr<pg::Pool> pool;
  StoredHash dummy;  // verified for unknown users, result ignored
  std::atomic<uint64_t> queries{0};
  std::atomic<uint64_t> failures{0};
  log::RateLimit log_limit{2};

  void logFailure(std::string_view what, const std::string& why) {
    ++failures;
    if (log_limit.allow())
      log::warn("postgres query failed",
                {{"query", what}, {"error", why}, {"suppressed", log_limit.suppressed()}});
  }

  // Runs q with the bound parameters; copies what it needs inside fn.
  Result<bool> exec(const pg::CompiledQuery& q, std::string_view user, const filters::SessionFacts* facts,
                    const std::function<void(const pg::Rows&)>& fn) {
    return exec(q, pg::ParamValues{user, {}, facts}, fn);
  }
  Result<bool> exec(const pg::CompiledQuery& q, const pg::ParamValues& values,
                    const std::function<void(const pg::Rows&)>& fn) {
    ++queries;
    const std::vector<std::string> params = pg::bindParams(q, values);
    return pool->run([&](pg::Connection& c) { fn(pg::execPrepared(c, q.name, params)); });
  }

  // q on a pooled connection the caller holds, for the queries of one answer.
  static pg::Rows query(pg::Connection& c, const pg::CompiledQuery& q, const pg::ParamValues& values) {
    return pg::execPrepared(c, q.name, pg::bindParams(q, values));
  }
  static bool hasRow(pg::Connection& c, const pg::CompiledQuery& q, const pg::ParamValues& values) {
    return !query(c, q, values).empty();
  }
};

namespace {

// The facts of the SMTP-time queries without a session's (the sender check, a
// recipient check without facts): %{protocol} is "smtp", %{client_ip} empty.
const filters::SessionFacts& smtpFacts() {
  static const filters::SessionFacts facts = [] {
    filters::SessionFacts f;
    f.protocol = "smtp";
    return f;
  }();
  return facts;
}

}  // namespace

Result<std::shared_ptr<PostgresDirectory>> PostgresDirectory::create(const conf::DirectoryConfig& dcfg) {
  auto impl = std::make_unique<Impl>();
  impl->cfg = dcfg.postgres;
  const auto scheme = parseScheme(impl->cfg.default_scheme);
  if (!scheme) return Error{"directory.postgres.default_scheme: unknown password scheme " + impl->cfg.default_scheme};
  impl->default_scheme = *scheme;
  const auto& q = impl->cfg.queries;
  auto pw = pg::compileQuery(q.password.empty() ? kDefaultPasswordQuery : q.password, "mailgate_password",
                             "directory.postgres.queries.password");
  if (!pw) return Error{pw.error()};
  impl->password = std::move(*pw);
  if (!q.route.empty()) {
    auto r = pg::compileQuery(q.route, "mailgate_route", "directory.postgres.queries.route");
    if (!r) return Error{r.error()};
    impl->route = std::move(*r);
  }
  auto rc = pg::compileQuery(q.recipient.empty() ? kDefaultRecipientQuery : q.recipient, "mailgate_recipient",
                             "directory.postgres.queries.recipient");
  if (!rc) return Error{rc.error()};
  impl->recipient = std::move(*rc);
  auto dq = pg::compileQuery(q.domain.empty() ? kDefaultDomainQuery : q.domain, "mailgate_domain",
                             "directory.postgres.queries.domain");
  if (!dq) return Error{dq.error()};
  impl->domain = std::move(*dq);
  auto sq = pg::compileQuery(q.sender.empty() ? kDefaultSenderQuery : q.sender, "mailgate_sender",
                             "directory.postgres.queries.sender");
  if (!sq) return Error{sq.error()};
  impl->sender = std::move(*sq);

  auto dummy = makeHash(impl->default_scheme, "mailgate-dummy-password");
  if (dummy) {
    auto parsed = parseStoredHash(*dummy, impl->default_scheme);
    if (parsed) impl->dummy = std::move(*parsed);
  }

  std::vector<pg::CompiledQuery> statements{impl->password, impl->recipient};
  if (!impl->route.empty()) statements.push_back(impl->route);
  // The SMTP-time statements must not cost the logins: a database whose schema
  // lacks their tables (a legacy schema configured before these queries existed)
  // still logs users in, and only those checks fail (temporarily, logged).
  std::vector<pg::CompiledQuery> smtp_statements{impl->domain, impl->sender};
  Impl* self = impl.get();  // owns the pool, so it outlives every on_connect call
  impl->pool = std::make_unique<pg::Pool>(
      pg::withConnectTimeout(impl->cfg.conninfo, impl->cfg.timeout), impl->cfg.pool, impl->cfg.timeout,
      [statements, smtp_statements, self](pg::Connection& c) {
        for (const auto& s : statements) pg::prepare(c, s.name, s.sql);
        for (const auto& s : smtp_statements) {
          try {
            pg::prepare(c, s.name, s.sql);
          } catch (const pqxx::sql_error& e) {
            self->logFailure("prepare " + s.name, pg::describe(e));
          }
        }
      });
  return std::shared_ptr<PostgresDirectory>(new PostgresDirectory(std::move(impl)));
}

PostgresDirectory::PostgresDirectory(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PostgresDirectory::~PostgresDirectory() = default;

AuthResult PostgresDirectory::authenticate(std::string_view user, std::string_view password) {
  return run(user, password, nullptr);
}

AuthResult PostgresDirectory::authenticate(std::string_view user, std::string_view password,
                                           const filters::SessionFacts& facts) {
  return run(user, password, &facts);
}

AuthResult PostgresDirectory::run(std::string_view user, std::string_view password,
                                  const filters::SessionFacts* facts) {
  AuthResult out;
  out.verdict = Verdict::kTempFail;
  PasswordRow row;
  auto done = impl_->exec(impl_->password, user, facts, [&](const pg::Rows& r) {
    if (r.empty()) return;
    row.found = true;
    if (r.columns() == 0) return;
    if (!r.isNull(0, 0)) {
      row.has_hash = true;
      row.hash = r.text(0, 0);
    }
    int active = r.column("active");
    if (active < 0 && r.columns() >= 2 && r.columnType(1) == kBoolOid) active = 1;
    if (active >= 0 && !r.isNull(0, active) && falsy(r.text(0, active))) row.active = false;
    const int user_col = r.column("user");
    if (user_col >= 0 && !r.isNull(0, user_col)) row.user = r.text(0, user_col);
    row.route = routeFromRow(r, r.column("primary"), r.column("secondary"));
  });
  if (!done) {
    impl_->logFailure("password", done.error());
    out.reason = done.error();
    return out;
  }
  if (!row.found || !row.has_hash || !row.active) {
    if (!impl_->dummy.hash.empty()) (void)verifyPassword(impl_->dummy, password);
    out.verdict = Verdict::kUnknownUser;
    out.reason = !row.found ? "unknown user" : !row.has_hash ? "no password stored" : "mailbox disabled";
    return out;
  }
  auto stored = parseStoredHash(row.hash, impl_->default_scheme);
  if (!stored) {
    out.verdict = Verdict::kUnknownUser;
    out.reason = "unusable stored password: " + stored.error();
    return out;
  }
  if (!verifyPassword(*stored, password)) {
    out.verdict = Verdict::kBadPassword;
    out.reason = "wrong password";
    return out;
  }
  out.user = row.user.empty() ? std::string(user) : row.user;
  out.route = std::move(row.route);
  if (!impl_->route.empty()) {
    std::optional<RouteHint> hint;
    auto routed = impl_->exec(impl_->route, user, facts, [&](const pg::Rows& r) {
      if (r.empty() || r.columns() == 0) return;
      hint = routeFromRow(r, 0, r.columns() >= 2 ? 1 : -1);
    });
    if (!routed) {
      impl_->logFailure("route", routed.error());
      out = AuthResult{};
      out.verdict = Verdict::kTempFail;
      out.reason = routed.error();
      return out;
    }
    if (hint) out.route = std::move(hint);
  }
  out.verdict = Verdict::kOk;
  return out;
}

RecipientResult PostgresDirectory::recipient(std::string_view address) {
  return recipient(address, smtpFacts());
}

RecipientAnswer PostgresDirectory::lookupRecipient(std::string_view address,
                                                   const filters::SessionFacts& facts) {
  // The SMTP-time queries: %{protocol} is "smtp", %{client_ip} the session's (empty
  // without one).
  filters::SessionFacts bound;
  bound.client_ip = facts.client_ip;
  bound.protocol = "smtp";
  const pg::ParamValues values{address, {}, &bound};  // an empty address is the user's
  bool local_domain = false;
  bool exists = false;
  std::string mailbox;
  auto done = impl_->pool->run([&](pg::Connection& c) {
    ++impl_->queries;
    local_domain = Impl::hasRow(c, impl_->domain, values);
    if (!local_domain) return;
    ++impl_->queries;
    const pg::Rows r = Impl::query(c, impl_->recipient, values);
    exists = !r.empty();
    if (exists && r.columns() > 0 && !r.isNull(0, 0)) {
      const std::string v(r.text(0, 0));
      if (v.find('@') != std::string::npos && v.size() <= 320) mailbox = v;
    }
  });
  if (!done) {
    impl_->logFailure("recipient", done.error());
    return RecipientAnswer{RecipientResult::kTempFail, {}};
  }
  if (!local_domain) return RecipientAnswer{RecipientResult::kForeignDomain, {}};
  if (!exists) return RecipientAnswer{RecipientResult::kUnknownMailbox, {}};
  return RecipientAnswer{RecipientResult::kLocal, ascii::lower(mailbox)};
}

SenderResult PostgresDirectory::senderAllowed(std::string_view user, std::string_view address) {
  bool allowed = false;
  auto done = impl_->exec(impl_->sender, pg::ParamValues{user, address, &smtpFacts()},
                          [&](const pg::Rows& r) { allowed = !r.empty(); });
  if (!done) {
    impl_->logFailure("sender", done.error());
    return SenderResult::kTempFail;
  }
  return allowed ? SenderResult::kAllowed : SenderResult::kDenied;
}

std::string PostgresDirectory::statsText() const {
  return "pg_queries=" + std::to_string(impl_->queries.load()) +
         " pg_query_failures=" + std::to_string(impl_->failures.load()) +
         " pg_connects=" + std::to_string(impl_->pool->connects());
}

}  // namespace mailgate::auth
