#pragma once
// Directory driver "postgres": users (and optionally per-login routes) from
// PostgreSQL through a bounded pool of libpqxx connections (directory.postgres).
//
// Queries (directory.postgres.queries; empty = the default on the default schema,
// see auth/postgres_schema.h and docs/postgres.md) may use the named parameters
// %{user}, %{address}, %{local_part}, %{domain}, %{client_ip} and %{protocol} (see
// auth/postgres_query.h; values lower-cased); they are bound as parameters of a
// prepared statement, never spliced into the SQL text. An unknown parameter is an
// error of create().
//
// password  → first row: column 0 is the stored hash, "{SCHEME}hash" or a bare hash
//             in default_scheme. No row, or a NULL hash → kUnknownUser. Optional
//             columns by name: "active" (false → kUnknownUser, "disabled"), "user"
//             (the canonical name reported on success), "primary"/"secondary"
//             (a route hint, as from the route query). A second column of type
//             boolean counts as "active" when no column is named so.
// route     → optional (default none: the routing map comes from the `routes`
//             listing, see PostgresRouteWatcher); run after a successful password
//             check; row columns primary, secondary (backend names or host[:port],
//             NULL = none) become AuthResult.route (cached with the login; a
//             hint older than the routing map is read again, see CachingDirectory).
// domain    → a row when %{domain} is a local domain (SMTP recipient check; the
//             default: the domains table, active ones).
// recipient → a row when the address exists (mailbox or alias), asked only for a
//             local domain. recipient(): no domain row → kForeignDomain; domain
//             but no recipient row → kUnknownMailbox; any error → kTempFail. Both
//             run on one pooled connection; %{user} = %{address} = the recipient,
//             %{protocol} = "smtp".
// sender    → a row when the login %{user} may use the envelope sender %{address}
//             (%{local_part}/%{domain} split the sender). The default: the sender
//             is the login itself, or an active alias (aliases.address) whose
//             target is the login. No row → kDenied, any error → kTempFail.
//
// password, recipient and route are prepared on every new connection, and a failure
// fails the connection; domain and sender too, but a failure there is only logged
// (logins keep working on a schema without their tables; those checks then fail).
//
// Every query runs with statement_timeout = directory.postgres.timeout; the connect
// has connect_timeout = the timeout rounded up to seconds, at least 2 (libpq's
// minimum). Any database error (connect, broken connection, SQL error, timeout, no
// free connection within the timeout) makes that request kTempFail — never a
// wrong-password answer; the connection is dropped and re-made on a later request,
// with exponential backoff (100 ms doubling to 1 s) while the database stays
// unreachable. Multi-host conninfo (host=a,b target_session_attrs=read-write) works
// as libpq does it.
//
// Blocking and thread-safe: call from worker threads only. Password verification
// runs after the connection went back to the pool.
#include <memory>
#include <string>
#include <string_view>

#include "auth/directory.h"
#include "conf/config.h"
#include "gateway/core/result.h"

namespace mailgate::auth {

class PostgresDirectory : public Directory {
 public:
  // Validates the queries and the default scheme; does not connect (the database
  // may be down at start-up).
  static Result<std::shared_ptr<PostgresDirectory>> create(const conf::DirectoryConfig& cfg);
  ~PostgresDirectory() override;

  AuthResult authenticate(std::string_view user, std::string_view password) override;
  AuthResult authenticate(std::string_view user, std::string_view password,
                          const filters::SessionFacts& facts) override;

  // The domain query, then the recipient query (see above).
  RecipientResult recipient(std::string_view address) override;
  RecipientResult recipient(std::string_view address, const filters::SessionFacts& facts) override {
    return lookupRecipient(address, facts).result;
  }
  // The recipient query's first column, when it holds an address, is the mailbox to
  // route by (the default query returns the mailbox itself or the alias's target).
  RecipientAnswer lookupRecipient(std::string_view address, const filters::SessionFacts& facts) override;
  // The sender query.
  SenderResult senderAllowed(std::string_view user, std::string_view address) override;

  // "pg_queries=.. pg_query_failures=.. pg_connects=.."
  std::string statsText() const override;

  struct Impl;

 private:
  explicit PostgresDirectory(std::unique_ptr<Impl> impl);
  AuthResult run(std::string_view user, std::string_view password, const filters::SessionFacts* facts);
  std::unique_ptr<Impl> impl_;
};

// The default queries (docs and tests).
extern const char* const kDefaultPasswordQuery;
extern const char* const kDefaultRecipientQuery;
extern const char* const kDefaultDomainQuery;
extern const char* const kDefaultSenderQuery;
extern const char* const kDefaultRoutesQuery;
extern const char* const kDefaultNodesQuery;

}  // namespace mailgate::auth
