#pragma once
// The exception queue in PostgreSQL (queue.store: postgres, with the postgres
// directory): table mailgate_queue (auth/postgres_schema.cc, migration 5), one row
// per entry with the message stored once in a bytea, the envelope and the state of
// each recipient in a text column (queue::encodeQueueMeta), and real columns for
// what the queries need (next_ms, the lease, size, message_id, mail_from).
//
// Every gateway of the cluster shares the table:
// - put() runs in one transaction: the row goes in first (the message as one binary
//   parameter), then a transaction-level advisory lock is taken only for counting,
//   so the bounds (queue.max_entries, queue.max_size) hold across gateways without
//   one gateway's upload holding up every other put; it answers kStored only once
//   COMMIT returned.
// - body() reads the message in ranges (substring) as it is read, never whole.
// - claimDue() leases due entries with one UPDATE whose row selection takes the
//   rows FOR UPDATE SKIP LOCKED: two gateways never get the same entry, and a lease
//   whose gateway died runs out (lease_until_ms) and the entry is due again.
// - update(), renew() and remove() with an owner write only while that owner holds a
//   live lease (the gateway's wall clock; the cluster's clocks are assumed in step to
//   well within queue.lease).
//
// The statements run on libpq through the pool's prepared-statement path
// (auth/postgres_pool.h): each result is owned from the start, so nothing leaks
// when the connection breaks mid-query. A failure is an Error (kError for put);
// the pool reconnects on the next call.
#include <memory>
#include <string>

#include "conf/config.h"
#include "gateway/core/result.h"
#include "gateway/queue/queue_store.h"

namespace mailgate::auth {

namespace pg {
class Pool;
}

class PostgresQueueStore final : public queue::QueueStore {
 public:
  // dir: the postgres directory's settings (conninfo, timeout); the store has its
  // own small pool on them. q: the bounds (max_entries, max_size; 0: no bound).
  static Result<std::shared_ptr<PostgresQueueStore>> create(const conf::DirectoryConfig& dir,
                                                            const conf::QueueConfig& q);
  ~PostgresQueueStore() override;

  std::string_view kind() const override { return "postgres"; }
  Put put(queue::QueueEntry entry, const filters::MessageBody& body, std::string* error) override;
  Result<std::vector<queue::QueueEntry>> claimDue(const std::string& owner, int64_t now_ms, int64_t lease_ms,
                                                  size_t limit) override;
  Result<std::shared_ptr<const filters::MessageBody>> body(const std::string& id) override;
  Result<bool> update(const queue::QueueEntry& entry, const std::string& owner, bool release) override;
  Result<bool> renew(const std::string& id, const std::string& owner, int64_t now_ms, int64_t until_ms) override;
  Result<bool> remove(const std::string& id, const std::string& owner) override;
  Result<std::vector<queue::QueueEntry>> list(size_t limit) override;
  Result<std::optional<queue::QueueEntry>> get(const std::string& id) override;
  Result<bool> retryNow(const std::string& id) override;
  Result<queue::QueueSummary> summary() override;
  Result<std::vector<queue::QueueEntry>> findByMessage(const std::string& message_id,
                                                       const std::string& mail_from) override;

 private:
  PostgresQueueStore(std::unique_ptr<pg::Pool> pool, uint64_t max_entries, uint64_t max_size);
  std::shared_ptr<pg::Pool> pool_;  // shared with the bodies body() hands out
  const uint64_t max_entries_;
  const uint64_t max_size_;
};

// The store as the runtime holds it (queue.store: postgres). Error when the
// directory is not postgres.
Result<std::shared_ptr<queue::QueueStore>> makePostgresQueueStore(const conf::DirectoryConfig& dir,
                                                                  const conf::QueueConfig& q);

}  // namespace mailgate::auth
