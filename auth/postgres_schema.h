#pragma once
// The default PostgreSQL schema of the postgres directory, as versioned migrations
// embedded in the binary (`mailgate --init-db FILE`).
//
// Table mailgate_schema(version) holds the version applied; each migration runs in
// its own transaction under an advisory lock (two gateways may run --init-db at
// once), so re-running is a no-op and an older database is brought forward.
// Tables (see docs/postgres.md): domains, nodes, mailboxes, aliases, routes, and
// a trigger that NOTIFYs channel mailgate_routes on every change to nodes, routes
// and the route columns of mailboxes; mailgate_bans (NOTIFY mailgate_bans) and the
// UNLOGGED mailgate_policy_counters for the policy's state shared by the gateways;
// mailgate_quarantine (the quarantine) and mailgate_queue (the exception queue).
#include <string>

#include "conf/config.h"
#include "gateway/core/result.h"

namespace mailgate::auth {

// The newest schema version this binary knows.
int latestSchemaVersion();

// Connects with cfg.postgres.conninfo and applies every missing migration.
// Returns a summary ("schema version 2 (applied 1, 2)" or "schema version 2 (up to
// date)"), or the error (connection, SQL, a database newer than this binary).
Result<std::string> initDatabase(const conf::DirectoryConfig& cfg);
// The same, stopping at target_version (tests of the upgrade path).
Result<std::string> initDatabase(const conf::DirectoryConfig& cfg, int target_version);

}  // namespace mailgate::auth
