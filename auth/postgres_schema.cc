#include "auth/postgres_schema.h"

#include <string_view>

#include "auth/postgres_pool.h"

namespace mailgate::auth {
namespace {

// Migrations: index i is version i + 1. Never edit a published migration; append.
constexpr std::string_view kMigrations[] = {
    // 1: domains, nodes, mailboxes, aliases, routes, NOTIFY triggers.
    R"sql(
CREATE TABLE domains (
  name   text PRIMARY KEY,
  active boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX domains_name_lower ON domains (lower(name));

CREATE TABLE nodes (
  name      text PRIMARY KEY,
  host      text NOT NULL,
  imap_port integer CHECK (imap_port BETWEEN 1 AND 65535),
  pop3_port integer CHECK (pop3_port BETWEEN 1 AND 65535),
  smtp_port integer CHECK (smtp_port BETWEEN 1 AND 65535),
  lmtp_port integer CHECK (lmtp_port BETWEEN 1 AND 65535),
  state     text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'drain', 'down'))
);

CREATE TABLE mailboxes (
  address         text PRIMARY KEY,
  domain          text NOT NULL REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE,
  password        text NOT NULL,
  active          boolean NOT NULL DEFAULT true,
  route_primary   text REFERENCES nodes (name) ON UPDATE CASCADE ON DELETE SET NULL,
  route_secondary text REFERENCES nodes (name) ON UPDATE CASCADE ON DELETE SET NULL,
  CHECK (position('@' in address) > 1)
);
CREATE UNIQUE INDEX mailboxes_address_lower ON mailboxes (lower(address));
CREATE INDEX mailboxes_domain ON mailboxes (domain);

CREATE TABLE aliases (
  address text NOT NULL,
  target  text NOT NULL,
  PRIMARY KEY (address, target)
);
CREATE INDEX aliases_address_lower ON aliases (lower(address));

-- domain "*" is the default route
CREATE TABLE routes (
  domain         text PRIMARY KEY,
  primary_node   text NOT NULL REFERENCES nodes (name) ON UPDATE CASCADE,
  secondary_node text REFERENCES nodes (name) ON UPDATE CASCADE ON DELETE SET NULL
);

CREATE FUNCTION mailgate_notify_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('mailgate_routes', TG_TABLE_NAME);
  RETURN NULL;
END
$$;

CREATE TRIGGER nodes_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON nodes
  FOR EACH STATEMENT EXECUTE FUNCTION mailgate_notify_routes();
CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON routes
  FOR EACH STATEMENT EXECUTE FUNCTION mailgate_notify_routes();
CREATE TRIGGER mailboxes_notify_insert AFTER INSERT ON mailboxes FOR EACH ROW
  WHEN (NEW.route_primary IS NOT NULL OR NEW.route_secondary IS NOT NULL)
  EXECUTE FUNCTION mailgate_notify_routes();
CREATE TRIGGER mailboxes_notify_update AFTER UPDATE ON mailboxes FOR EACH ROW
  WHEN (OLD.route_primary IS DISTINCT FROM NEW.route_primary
        OR OLD.route_secondary IS DISTINCT FROM NEW.route_secondary
        OR ((NEW.route_primary IS NOT NULL OR NEW.route_secondary IS NOT NULL)
            AND OLD.address IS DISTINCT FROM NEW.address))
  EXECUTE FUNCTION mailgate_notify_routes();
CREATE TRIGGER mailboxes_notify_delete AFTER DELETE ON mailboxes FOR EACH ROW
  WHEN (OLD.route_primary IS NOT NULL OR OLD.route_secondary IS NOT NULL)
  EXECUTE FUNCTION mailgate_notify_routes();
CREATE TRIGGER mailboxes_notify_truncate AFTER TRUNCATE ON mailboxes
  FOR EACH STATEMENT EXECUTE FUNCTION mailgate_notify_routes();
)sql",
    // 2: aliases can be switched off without deleting them.
    R"sql(
ALTER TABLE aliases ADD COLUMN active boolean NOT NULL DEFAULT true;
)sql",
    // 3: bans shared by the gateways (NOTIFY mailgate_bans with the row's network, or
    // "*" on TRUNCATE) and the cluster-scope policy counters (UNLOGGED: a window's
    // counts are worthless after a crash anyway).
    R"sql(
CREATE TABLE mailgate_bans (
  net     cidr PRIMARY KEY,
  created timestamptz NOT NULL DEFAULT now(),
  expires timestamptz NOT NULL,
  level   integer NOT NULL DEFAULT 1 CHECK (level >= 1),
  reason  text NOT NULL DEFAULT '',
  origin  text NOT NULL DEFAULT ''
);
CREATE INDEX mailgate_bans_expires ON mailgate_bans (expires);

CREATE FUNCTION mailgate_notify_bans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify('mailgate_bans', '*');
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('mailgate_bans', OLD.net::text);
  ELSE
    PERFORM pg_notify('mailgate_bans', NEW.net::text);
    IF TG_OP = 'UPDATE' AND OLD.net IS DISTINCT FROM NEW.net THEN
      PERFORM pg_notify('mailgate_bans', OLD.net::text);
    END IF;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER mailgate_bans_notify AFTER INSERT OR UPDATE OR DELETE ON mailgate_bans
  FOR EACH ROW EXECUTE FUNCTION mailgate_notify_bans();
CREATE TRIGGER mailgate_bans_notify_truncate AFTER TRUNCATE ON mailgate_bans
  FOR EACH STATEMENT EXECUTE FUNCTION mailgate_notify_bans();

CREATE UNLOGGED TABLE mailgate_policy_counters (
  key          text NOT NULL,
  window_start bigint NOT NULL,
  gateway      text NOT NULL,
  count        bigint NOT NULL DEFAULT 0,
  updated      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (key, window_start, gateway)
);
CREATE INDEX mailgate_policy_counters_window ON mailgate_policy_counters (window_start);
)sql",
    // 4: the quarantine (hooks.quarantine.store: postgres): one row per held message,
    // the message in a bytea (up to the largest message a listener accepts). rcpts and
    // delivered are one address a line. releasing_until: a release in progress (a
    // second one waits for it, or for its expiry if its gateway died).
    R"sql(
CREATE TABLE IF NOT EXISTS mailgate_quarantine (
  id              text PRIMARY KEY,
  created         timestamptz NOT NULL DEFAULT now(),
  created_ms      bigint NOT NULL,
  reason          text NOT NULL DEFAULT '',
  filter          text NOT NULL DEFAULT '',
  ref             text NOT NULL DEFAULT '',
  mail_from       text NOT NULL,
  rcpts           text NOT NULL,
  delivered       text NOT NULL DEFAULT '',
  client_ip       text NOT NULL DEFAULT '',
  helo            text NOT NULL DEFAULT '',
  username        text NOT NULL DEFAULT '',
  listener        text NOT NULL DEFAULT '',
  session_id      text NOT NULL DEFAULT '',
  smtputf8        boolean NOT NULL DEFAULT false,
  body_8bit       boolean NOT NULL DEFAULT false,
  size            bigint NOT NULL,
  message         bytea NOT NULL,
  releasing_until timestamptz
);
CREATE INDEX IF NOT EXISTS mailgate_quarantine_created ON mailgate_quarantine (created_ms);
)sql",
    // 5: the exception queue (queue.store: postgres, auth/postgres_queue.h): one row
    // per entry, the message stored once in a bytea, the envelope and the recipients'
    // states in meta (queue::encodeQueueMeta). lease_owner/lease_until_ms: the gateway
    // working on the entry ('' and 0: nobody); claims take rows FOR UPDATE SKIP LOCKED.
    // message_id: the duplicate check of a resent message (a hash index: any length).
    R"sql(
CREATE TABLE IF NOT EXISTS mailgate_queue (
  id             text PRIMARY KEY,
  created_ms     bigint NOT NULL,
  next_ms        bigint NOT NULL DEFAULT 0,
  attempts       integer NOT NULL DEFAULT 0,
  size           bigint NOT NULL,
  message_id     text NOT NULL DEFAULT '',
  mail_from      text NOT NULL,
  lease_owner    text NOT NULL DEFAULT '',
  lease_until_ms bigint NOT NULL DEFAULT 0,
  meta           text NOT NULL,
  message        bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS mailgate_queue_next ON mailgate_queue (next_ms);
CREATE INDEX IF NOT EXISTS mailgate_queue_created ON mailgate_queue (created_ms);
CREATE INDEX IF NOT EXISTS mailgate_queue_message_id ON mailgate_queue USING hash (message_id);
)sql",
};

constexpr int kLatest = static_cast<int>(sizeof kMigrations / sizeof kMigrations[0]);
// Serialises concurrent --init-db runs (an arbitrary constant: "mailgate" in ASCII).
constexpr std::string_view kLockKey = "7089068426741342277";

}  // namespace

int latestSchemaVersion() { return kLatest; }

Result<std::string> initDatabase(const conf::DirectoryConfig& cfg) { return initDatabase(cfg, kLatest); }

Result<std::string> initDatabase(const conf::DirectoryConfig& cfg, int target_version) {
  if (target_version < 0 || target_version > kLatest) return Error{"no such schema version"};
  const auto& pgc = cfg.postgres;
  std::string applied;
  int version = 0;
  try {
    // Migrations may take longer than a login query: no statement timeout here.
    auto conn = std::make_unique<pqxx::connection>(pg::withConnectTimeout(pgc.conninfo, pgc.timeout));
    {
      pqxx::work tx(*conn);
      tx.exec("SELECT pg_advisory_xact_lock(" + std::string(kLockKey) + ")");
      tx.exec("CREATE TABLE IF NOT EXISTS mailgate_schema (version integer NOT NULL)");
      tx.exec("INSERT INTO mailgate_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM mailgate_schema)");
      tx.commit();
    }
    for (int v = 1; v <= target_version; ++v) {
      pqxx::work tx(*conn);
      tx.exec("SELECT pg_advisory_xact_lock(" + std::string(kLockKey) + ")");
      version = tx.exec("SELECT max(version) FROM mailgate_schema")[0][0].as<int>();
      if (version > kLatest) {
        return Error{"database schema version " + std::to_string(version) + " is newer than this mailgate (" +
                     std::to_string(kLatest) + ")"};
      }
      if (version >= v) continue;  // the transaction rolls back: nothing was changed
      tx.exec(std::string(kMigrations[v - 1]));
      tx.exec("UPDATE mailgate_schema SET version = " + std::to_string(v));
      tx.commit();
      version = v;
      applied += applied.empty() ? std::to_string(v) : ", " + std::to_string(v);
    }
    if (target_version == 0) {
      pqxx::nontransaction tx(*conn);
      version = tx.exec("SELECT max(version) FROM mailgate_schema")[0][0].as<int>();
    }
  } catch (const std::exception& e) {
    std::string msg = "init-db: " + pg::describe(e);
    if (!applied.empty()) msg += " (applied " + applied + " before the error)";
    return Error{msg};
  }
  if (applied.empty()) return "schema version " + std::to_string(version) + " (up to date)";
  return "schema version " + std::to_string(version) + " (applied " + applied + ")";
}

}  // namespace mailgate::auth
