#include "auth/postgres_queue.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <mutex>

#include "auth/postgres_pool.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::auth {

namespace {

// Serialises the bound checks of every gateway's insert (pg_advisory_xact_lock): an
// arbitrary constant, distinct from the schema's ("mailgq" + 1).
constexpr const char* kPutLockKey = "7089068426741342278";

// The columns every entry is read with (never the message), in entryOf()'s order.
#define MG_QUEUE_COLUMNS "id, created_ms, next_ms, attempts, size, message_id, mail_from, lease_owner, lease_until_ms, meta"

// The statements, prepared on each connection of the store's pool.
constexpr const char* kLock = "mq_lock";
constexpr const char* kExists = "mq_exists";
constexpr const char* kUsage = "mq_usage";
constexpr const char* kClaim = "mq_claim";
constexpr const char* kBodySize = "mq_body_size";
constexpr const char* kBodyRange = "mq_body_range";
constexpr const char* kUpdate = "mq_update";
constexpr const char* kRenew = "mq_renew";
constexpr const char* kRemove = "mq_remove";
constexpr const char* kRemoveOwned = "mq_remove_owned";
constexpr const char* kList = "mq_list";
constexpr const char* kGet = "mq_get";
constexpr const char* kRetry = "mq_retry";
constexpr const char* kSummary = "mq_summary";
constexpr const char* kFind = "mq_find";

void prepareStatements(pg::Connection& c) {
  pg::prepare(c, kLock, std::string("SELECT pg_advisory_xact_lock(") + kPutLockKey + ")");
  pg::prepare(c, kExists, "SELECT 1 FROM mailgate_queue WHERE id = $1");
  pg::prepare(c, kUsage, "SELECT count(*), coalesce(sum(size), 0) FROM mailgate_queue");
  // The subquery picks and locks the due rows nobody holds (a row another gateway is
  // claiming at this moment is skipped, never waited for); the UPDATE leases them.
  pg::prepare(c, kClaim,
              "UPDATE mailgate_queue SET lease_owner = $1, lease_until_ms = $2::bigint + $3::bigint "
              "WHERE id IN (SELECT id FROM mailgate_queue WHERE next_ms <= $2::bigint AND lease_until_ms < "
              "$2::bigint ORDER BY next_ms, id LIMIT $4::bigint FOR UPDATE SKIP LOCKED) "
              "RETURNING " MG_QUEUE_COLUMNS);
  pg::prepare(c, kBodySize, "SELECT octet_length(message) FROM mailgate_queue WHERE id = $1");
  pg::prepare(c, kBodyRange,
              "SELECT substring(message from $2::integer for $3::integer) FROM mailgate_queue WHERE id = $1");
  pg::prepare(c, kUpdate,
              "UPDATE mailgate_queue SET meta = $3, next_ms = $4::bigint, attempts = $5::integer, "
              "lease_owner = CASE WHEN $6::boolean THEN '' ELSE lease_owner END, "
              "lease_until_ms = CASE WHEN $6::boolean THEN 0 ELSE lease_until_ms END "
              "WHERE id = $1 AND lease_owner = $2 AND lease_until_ms >= $7::bigint RETURNING id");
  pg::prepare(c, kRenew,
              "UPDATE mailgate_queue SET lease_until_ms = $4::bigint "
              "WHERE id = $1 AND lease_owner = $2 AND lease_until_ms >= $3::bigint RETURNING id");
  pg::prepare(c, kRemove, "DELETE FROM mailgate_queue WHERE id = $1 RETURNING id");
  pg::prepare(c, kRemoveOwned,
              "DELETE FROM mailgate_queue WHERE id = $1 AND lease_owner = $2 AND lease_until_ms >= $3::bigint "
              "RETURNING id");
  pg::prepare(c, kList,
              "SELECT " MG_QUEUE_COLUMNS " FROM mailgate_queue ORDER BY created_ms, id LIMIT $1::bigint");
  pg::prepare(c, kGet, "SELECT " MG_QUEUE_COLUMNS " FROM mailgate_queue WHERE id = $1");
  pg::prepare(c, kRetry, "UPDATE mailgate_queue SET next_ms = 0 WHERE id = $1 RETURNING id");
  pg::prepare(c, kSummary,
              "SELECT count(*), coalesce(sum(size), 0), coalesce(min(created_ms), 0) FROM mailgate_queue");
  pg::prepare(c, kFind,
              "SELECT " MG_QUEUE_COLUMNS
              " FROM mailgate_queue WHERE message_id = $1 AND mail_from = $2 ORDER BY created_ms, id");
}

using core::wallMs;

// A bigint/integer column's text (the server's output: always well formed).
int64_t number(const pg::Rows& r, int row, int col) {
  int64_t v = 0;
  const std::string_view t = r.text(row, col);
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

// One entry from a row of MG_QUEUE_COLUMNS. The columns are authoritative for what
// they hold; the rest comes from meta. false when meta does not parse (*e then has
// the columns only: no recipients).
bool entryOf(const pg::Rows& r, int row, queue::QueueEntry* e) {
  *e = queue::QueueEntry{};
  const bool ok = queue::decodeQueueMeta(r.text(row, 9), e);
  if (!ok) *e = queue::QueueEntry{};
  e->id = std::string(r.text(row, 0));
  e->created_ms = number(r, row, 1);
  e->next_ms = number(r, row, 2);
  e->attempts = static_cast<uint32_t>(number(r, row, 3));
  e->size = static_cast<uint64_t>(number(r, row, 4));
  e->message_id = std::string(r.text(row, 5));
  e->mail_from = std::string(r.text(row, 6));
  e->lease_owner = std::string(r.text(row, 7));
  e->lease_until_ms = number(r, row, 8);
  return ok;
}

// The message is sent as one binary parameter (a bytea in binary format): no text
// encoding, no copy but the one buffer (libpq's output buffer aside).
constexpr const char* kInsertSql =
    "INSERT INTO mailgate_queue (id, created_ms, next_ms, attempts, size, message_id, mail_from, meta, message) "
    "VALUES ($1, $2::bigint, $3::bigint, $4::integer, $5::bigint, $6, $7, $8, $9::bytea)";

// The message of one entry, read from the database in ranges as the reader asks for
// them (a window of at least kWindow octets at a time), never whole: a delivery reads
// it front to back in chunks. A read fails when the row went away meanwhile.
class RangeBody final : public filters::MessageBody {
 public:
  static constexpr size_t kWindow = 1u << 20;
  RangeBody(std::shared_ptr<pg::Pool> pool, std::string id, uint64_t size)
      : pool_(std::move(pool)), id_(std::move(id)), size_(size) {}
  uint64_t size() const override { return size_; }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    out->clear();
    if (off >= size_ || n == 0) return true;
    n = static_cast<size_t>(std::min<uint64_t>(n, size_ - off));
    std::lock_guard<std::mutex> g(mu_);
    if (off < window_off_ || off + n > window_off_ + window_.size()) {
      const uint64_t want = std::min<uint64_t>(std::max(n, kWindow), size_ - off);
      std::string data;
      bool found = false;
      auto ok = pool_->run([&](pg::Connection& c) {
        // substring counts from 1.
        const pg::Rows r =
            pg::execPrepared(c, kBodyRange, {id_, std::to_string(off + 1), std::to_string(want)});
        found = !r.empty() && !r.isNull(0, 0);
        if (found) data = pg::bytea(r.text(0, 0));
      });
      if (!ok || !found || data.size() != want) return false;
      window_ = std::move(data);
      window_off_ = off;
    }
    out->assign(window_, static_cast<size_t>(off - window_off_), n);
    return true;
  }

 private:
  std::shared_ptr<pg::Pool> pool_;
  std::string id_;
  uint64_t size_;
  mutable std::mutex mu_;
  mutable std::string window_;     // the octets from window_off_ (guarded by mu_)
  mutable uint64_t window_off_ = 0;
};

Error dbError(const Result<bool>& r) { return Error{"database: " + r.error()}; }

}  // namespace

PostgresQueueStore::PostgresQueueStore(std::unique_ptr<pg::Pool> pool, uint64_t max_entries, uint64_t max_size)
    : pool_(std::move(pool)), max_entries_(max_entries), max_size_(max_size) {}
PostgresQueueStore::~PostgresQueueStore() = default;

Result<std::shared_ptr<PostgresQueueStore>> PostgresQueueStore::create(const conf::DirectoryConfig& dir,
                                                                       const conf::QueueConfig& q) {
  if (dir.driver != "postgres") return Error{"queue store postgres needs directory.driver postgres"};
  // A message may take a while to write: the statement timeout is at least a minute.
  const conf::Duration timeout = std::max<conf::Duration>(dir.postgres.timeout, std::chrono::seconds(60));
  // Sessions putting, the runner claiming and the admin reading at once.
  auto pool = std::make_unique<pg::Pool>(pg::withConnectTimeout(dir.postgres.conninfo, dir.postgres.timeout), 3,
                                         timeout, prepareStatements);
  return std::shared_ptr<PostgresQueueStore>(new PostgresQueueStore(std::move(pool), q.max_entries, q.max_size));
}

Result<std::shared_ptr<queue::QueueStore>> makePostgresQueueStore(const conf::DirectoryConfig& dir,
                                                                  const conf::QueueConfig& q) {
  auto s = PostgresQueueStore::create(dir, q);
  if (!s) return Error{s.error()};
  return std::shared_ptr<queue::QueueStore>(std::move(s.value()));
}

queue::QueueStore::Put PostgresQueueStore::put(queue::QueueEntry entry, const filters::MessageBody& body,
                                               std::string* error) {
  auto fail = [&](std::string why) {
    if (error) *error = std::move(why);
    return Put::kError;
  };
  if (!queue::validQueueId(entry.id)) return fail("invalid queue id");
  if (entry.created_ms == 0) entry.created_ms = wallMs();
  entry.size = body.size();
  entry.lease_owner.clear();
  entry.lease_until_ms = 0;
  std::string data, chunk;
  data.reserve(static_cast<size_t>(entry.size));
  for (uint64_t off = 0; off < entry.size;) {
    if (!body.read(off, 64 * 1024, &chunk) || chunk.empty()) return fail("cannot read the message");
    data += chunk;
    off += chunk.size();
  }
  chunk = std::string();
  const std::string meta = queue::encodeQueueMeta(entry);
  auto over = [&](const pg::Rows& usage, uint64_t more_entries, uint64_t more_bytes) {
    const auto entries = static_cast<uint64_t>(number(usage, 0, 0));
    const auto bytes = static_cast<uint64_t>(number(usage, 0, 1));
    return (max_entries_ && entries + more_entries > max_entries_) ||
           (max_size_ && bytes + more_bytes > max_size_);
  };
  Put verdict = Put::kError;
  auto ok = pool_->run([&](pg::Connection& c) {
    verdict = Put::kError;
    // A retry after a lost connection may find its own row committed: stored.
    if (!pg::execPrepared(c, kExists, {entry.id}).empty()) {
      verdict = Put::kStored;
      return;
    }
    // Full already: no upload (the authoritative count follows under the lock).
    // A DSN is never refused for room: it lets the entry it reports on go.
    if (!entry.dsn && over(pg::execPrepared(c, kUsage, {}), 1, entry.size)) {
      verdict = Put::kFull;
      return;
    }
    pg::Transaction tx(c);  // rolled back unless committed (a refusal, an error)
    // The upload first, without the lock: the row is nobody else's to see until COMMIT.
    pg::exec(c, kInsertSql,
             {entry.id, std::to_string(entry.created_ms), std::to_string(entry.next_ms),
              std::to_string(entry.attempts), std::to_string(entry.size), entry.message_id, entry.mail_from,
              meta, pg::Value(std::string_view(data), true)});
    pg::execPrepared(c, kLock, {});
    // Under the lock every gateway's committed rows are counted, this one's own new
    // row included (read committed: this statement's snapshot is taken after the lock
    // was granted); the lock is held until COMMIT or ROLLBACK.
    if (!entry.dsn && over(pg::execPrepared(c, kUsage, {}), 0, 0)) {
      verdict = Put::kFull;
      return;
    }
    tx.commit();
    verdict = Put::kStored;
  });
  if (!ok) return fail("database: " + ok.error());
  return verdict;
}

Result<std::vector<queue::QueueEntry>> PostgresQueueStore::claimDue(const std::string& owner, int64_t now_ms,
                                                                    int64_t lease_ms, size_t limit) {
  std::vector<queue::QueueEntry> out;
  if (owner.empty()) return Error{"claim: no owner"};
  if (limit == 0) return out;
  auto ok = pool_->run([&](pg::Connection& c) {
    out.clear();
    const pg::Rows r = pg::execPrepared(
        c, kClaim, {owner, std::to_string(now_ms), std::to_string(std::max<int64_t>(lease_ms, 1)),
                    std::to_string(limit)});
    for (int i = 0; i < r.rows(); ++i) {
      queue::QueueEntry e;
      // An entry whose metadata does not parse stays leased (and due again when the
      // lease ends) for the operator to see and delete; it is never delivered blind.
      if (entryOf(r, i, &e)) out.push_back(std::move(e));
    }
  });
  if (!ok) return dbError(ok);
  std::sort(out.begin(), out.end(), [](const queue::QueueEntry& a, const queue::QueueEntry& b) {
    return a.next_ms != b.next_ms ? a.next_ms < b.next_ms : a.id < b.id;
  });
  return out;
}

Result<std::shared_ptr<const filters::MessageBody>> PostgresQueueStore::body(const std::string& id) {
  if (!queue::validQueueId(id)) return Error{"not found"};
  uint64_t size = 0;
  bool found = false;
  auto ok = pool_->run([&](pg::Connection& c) {
    const pg::Rows r = pg::execPrepared(c, kBodySize, {id});
    found = !r.empty();
    if (found) size = static_cast<uint64_t>(number(r, 0, 0));
  });
  if (!ok) return dbError(ok);
  if (!found) return Error{"not found"};
  return std::shared_ptr<const filters::MessageBody>(std::make_shared<RangeBody>(pool_, id, size));
}

Result<bool> PostgresQueueStore::update(const queue::QueueEntry& entry, const std::string& owner, bool release) {
  if (owner.empty() || !queue::validQueueId(entry.id)) return false;
  queue::QueueEntry stored = entry;
  if (release) {
    stored.lease_owner.clear();
    stored.lease_until_ms = 0;
  }
  const std::string meta = queue::encodeQueueMeta(stored);
  const int64_t now = wallMs();
  bool written = false;
  auto ok = pool_->run([&](pg::Connection& c) {
    written = !pg::execPrepared(c, kUpdate,
                                {entry.id, owner, meta, std::to_string(entry.next_ms), std::to_string(entry.attempts),
                                 release ? "true" : "false", std::to_string(now)})
                   .empty();
  });
  if (!ok) return dbError(ok);
  return written;
}

Result<bool> PostgresQueueStore::renew(const std::string& id, const std::string& owner, int64_t now_ms,
                                       int64_t until_ms) {
  if (owner.empty() || !queue::validQueueId(id)) return false;
  bool renewed = false;
  auto ok = pool_->run([&](pg::Connection& c) {
    renewed = !pg::execPrepared(c, kRenew, {id, owner, std::to_string(now_ms), std::to_string(until_ms)}).empty();
  });
  if (!ok) return dbError(ok);
  return renewed;
}

Result<bool> PostgresQueueStore::remove(const std::string& id, const std::string& owner) {
  if (!queue::validQueueId(id)) return false;
  const int64_t now = wallMs();
  bool removed = false;
  auto ok = pool_->run([&](pg::Connection& c) {
    removed = owner.empty() ? !pg::execPrepared(c, kRemove, {id}).empty()
                            : !pg::execPrepared(c, kRemoveOwned, {id, owner, std::to_string(now)}).empty();
  });
  if (!ok) return dbError(ok);
  return removed;
}

Result<std::vector<queue::QueueEntry>> PostgresQueueStore::list(size_t limit) {
  std::vector<queue::QueueEntry> out;
  auto ok = pool_->run([&](pg::Connection& c) {
    out.clear();
    const pg::Rows r = pg::execPrepared(c, kList, {std::to_string(limit)});
    for (int i = 0; i < r.rows(); ++i) {
      queue::QueueEntry e;
      (void)entryOf(r, i, &e);  // unreadable metadata: listed without recipients, to be deleted
      out.push_back(std::move(e));
    }
  });
  if (!ok) return dbError(ok);
  return out;
}

Result<std::optional<queue::QueueEntry>> PostgresQueueStore::get(const std::string& id) {
  std::optional<queue::QueueEntry> out;
  if (!queue::validQueueId(id)) return out;
  bool readable = true;
  auto ok = pool_->run([&](pg::Connection& c) {
    out.reset();
    const pg::Rows r = pg::execPrepared(c, kGet, {id});
    if (r.empty()) return;
    out.emplace();
    readable = entryOf(r, 0, &*out);
  });
  if (!ok) return dbError(ok);
  if (!readable) return Error{"queue entry " + id + ": unreadable metadata"};
  return out;
}

Result<bool> PostgresQueueStore::retryNow(const std::string& id) {
  if (!queue::validQueueId(id)) return false;
  bool found = false;
  auto ok = pool_->run([&](pg::Connection& c) { found = !pg::execPrepared(c, kRetry, {id}).empty(); });
  if (!ok) return dbError(ok);
  return found;
}

Result<queue::QueueSummary> PostgresQueueStore::summary() {
  queue::QueueSummary s;
  auto ok = pool_->run([&](pg::Connection& c) {
    const pg::Rows r = pg::execPrepared(c, kSummary, {});
    s.entries = static_cast<uint64_t>(number(r, 0, 0));
    s.bytes = static_cast<uint64_t>(number(r, 0, 1));
    s.oldest_created_ms = number(r, 0, 2);
  });
  if (!ok) return dbError(ok);
  return s;
}

Result<std::vector<queue::QueueEntry>> PostgresQueueStore::findByMessage(const std::string& message_id,
                                                                         const std::string& mail_from) {
  std::vector<queue::QueueEntry> out;
  if (message_id.empty()) return out;  // no Message-ID: no duplicate check
  auto ok = pool_->run([&](pg::Connection& c) {
    out.clear();
    const pg::Rows r = pg::execPrepared(c, kFind, {message_id, mail_from});
    for (int i = 0; i < r.rows(); ++i) {
      queue::QueueEntry e;
      if (entryOf(r, i, &e)) out.push_back(std::move(e));
    }
  });
  if (!ok) return dbError(ok);
  return out;
}

}  // namespace mailgate::auth
