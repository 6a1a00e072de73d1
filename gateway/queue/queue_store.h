#pragma once
// The exception queue: messages the gateway answered 250 for although a storage node
// did not take every recipient (LMTP deferred or refused some after the data). The
// message is stored once, with its envelope and the state of each recipient; any
// gateway sharing the store delivers the open recipients later, following each
// recipient's route at the time of the attempt, and a recipient that fails for good
// (or outlives queue.lifetime) gets the sender a delivery status notification.
//
// A queue, not a second MTA: in the normal path nothing is queued.
//
// Exactly once: an entry is worked on by one gateway at a time (claimDue() takes a
// lease: row locks with SKIP LOCKED in PostgreSQL, an atomic rename in a spool
// directory); the gateway records a recipient the node accepted (update()) before it
// does anything else, and a lease that ran out (its gateway died) lets another
// gateway take the entry again, skipping the recipients already delivered.
//
// Every call blocks (disk or database): call it on the content executor, the queue
// runner or the admin thread, never on a reactor. Implementations are thread-safe.
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/message_body.h"
#include "gateway/core/result.h"

namespace mailgate::queue {

enum class RcptState {
  kPending,    // still to deliver (deferred so far)
  kDelivered,  // a node accepted it (at the end of data, or from the queue)
  kFailed,     // refused for good or expired: the sender's DSN is still to be made
  kReported,   // failed, and the DSN was queued (or none is due: null sender)
};
std::string_view rcptStateName(RcptState s);
bool parseRcptState(std::string_view name, RcptState* out);

struct QueueRcpt {
  std::string addr;    // "<...>" as the client sent it
  RcptState state = RcptState::kPending;
  std::string reply;   // the node's last reply (or why it failed), one line
  int64_t updated_ms = 0;
};

struct QueueEntry {
  // The queue id the client was given in its 250 ("<session>-<n>"): [A-Za-z0-9._-],
  // at most 64 characters. A DSN's entry: the original id + ".dsn".
  std::string id;
  int64_t created_ms = 0;  // unix time, ms
  int64_t next_ms = 0;     // the next attempt is due (0: now)
  uint32_t attempts = 0;   // attempts from the queue so far
  // The envelope and where it came from.
  std::string mail_from;  // "<...>" as the client sent it; "<>" for the null sender
  std::vector<QueueRcpt> rcpts;
  std::string client_ip;
  std::string helo;
  std::string user;      // authenticated user (submission), or empty
  std::string listener;  // the listener it came in on (submission: relayed); empty for a DSN
  std::string session_id;
  std::string message_id;  // the message's Message-ID (the duplicate check), or empty
  bool smtputf8 = false;
  bool body_8bit = false;
  bool dsn = false;   // a delivery status notification the gateway made (never bounced)
  uint64_t size = 0;  // octets of the stored message
  // The lease (set by claimDue; empty/0 when nobody works on it).
  std::string lease_owner;
  int64_t lease_until_ms = 0;

  // Recipients still to deliver / failed without a DSN yet.
  size_t count(RcptState s) const;
  // Nothing left to do: every recipient delivered or reported.
  bool finished() const { return count(RcptState::kPending) == 0 && count(RcptState::kFailed) == 0; }
};

// The queue at a glance (for /metrics, the status page and the duplicate check).
struct QueueSummary {
  uint64_t entries = 0;
  uint64_t bytes = 0;
  int64_t oldest_created_ms = 0;  // 0 when empty
};

class QueueStore {
 public:
  enum class Put { kStored, kFull, kError };

  virtual ~QueueStore() = default;
  virtual std::string_view kind() const = 0;  // "dir" | "postgres"

  // Stores the entry and its message (entry.size is set here) and returns once it is
  // durable (the file and its directory fsync'd / the transaction committed).
  // kFull when max_entries or max_size would be exceeded (nothing stored; a DSN
  // entry is exempt: it lets the entry it reports on go); kError
  // with *error set when the store failed (nothing stored).
  virtual Put put(QueueEntry entry, const filters::MessageBody& body, std::string* error) = 0;

  // Takes up to `limit` entries that are due (next_ms <= now_ms) and not leased by a
  // live owner (lease_until_ms < now_ms), leasing them to `owner` until now_ms +
  // lease_ms; the oldest due first. Entries another gateway is taking at the same
  // moment are skipped, never waited for.
  virtual Result<std::vector<QueueEntry>> claimDue(const std::string& owner, int64_t now_ms, int64_t lease_ms,
                                                   size_t limit) = 0;

  // The stored message of an entry.
  virtual Result<std::shared_ptr<const filters::MessageBody>> body(const std::string& id) = 0;

  // Writes the entry's recipients, attempts and next_ms, if `owner` still holds
  // the lease (false when it does not: another gateway took over). release: the
  // lease ends with this write.
  virtual Result<bool> update(const QueueEntry& entry, const std::string& owner, bool release) = 0;

  // Extends the lease `owner` holds on the entry (live at now_ms: lease_until_ms >=
  // now_ms) to until_ms, so that a long delivery keeps it. false when the lease was
  // lost (another gateway holds it, or it ran out before now_ms) or there is no such
  // entry: the caller must stop working on the entry.
  virtual Result<bool> renew(const std::string& id, const std::string& owner, int64_t now_ms,
                             int64_t until_ms) = 0;

  // Removes the entry; with a non-empty owner only while that owner holds the lease.
  // false when there was no such entry (or the lease was lost).
  virtual Result<bool> remove(const std::string& id, const std::string& owner) = 0;

  // The operator's view: the oldest first, at most limit; one entry.
  virtual Result<std::vector<QueueEntry>> list(size_t limit) = 0;
  virtual Result<std::optional<QueueEntry>> get(const std::string& id) = 0;
  // Makes the entry due now (an operator's "retry now"); false when there is none.
  virtual Result<bool> retryNow(const std::string& id) = 0;

  virtual Result<QueueSummary> summary() = 0;

  // The queued copies of a message (the same Message-ID and sender): a client that
  // sends a queued message again gets 250 without a second copy for the recipients
  // the queue already holds.
  virtual Result<std::vector<QueueEntry>> findByMessage(const std::string& message_id,
                                                        const std::string& mail_from) = 0;
};

// Process-wide counters, for /metrics.
struct QueueStats {
  std::atomic<uint64_t> queued{0};        // entries written by sessions
  std::atomic<uint64_t> put_full{0};      // refused: the queue was full (the client got 451)
  std::atomic<uint64_t> put_failed{0};    // the store failed (the client got 451)
  std::atomic<uint64_t> attempts{0};      // delivery attempts from the queue (per entry and node)
  std::atomic<uint64_t> delivered{0};     // recipients delivered from the queue
  std::atomic<uint64_t> deferred{0};      // recipients deferred again
  std::atomic<uint64_t> failed{0};        // recipients failed for good (refused or expired)
  std::atomic<uint64_t> expired{0};       // of those, expired
  std::atomic<uint64_t> dsn_sent{0};      // DSNs queued for a sender
  std::atomic<uint64_t> dsn_delivered{0};  // of those, delivered (the sender's node or the relay took it)
  std::atomic<uint64_t> duplicates{0};    // recipients of a resent message the queue already held
  std::atomic<uint64_t> deleted{0};       // entries an operator deleted
  // The last summary the runner read (the whole store, every gateway's entries).
  std::atomic<uint64_t> entries{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<int64_t> oldest_created_ms{0};
};
QueueStats& queueStats();

// A queue id as the store accepts it.
bool validQueueId(std::string_view id);

// The entry's metadata as text ("key: value" lines, values %-escaped, one line per
// recipient), for the dir store's files and the postgres store's meta column.
// Parsing is pure: false on anything malformed.
std::string encodeQueueMeta(const QueueEntry& e);
bool decodeQueueMeta(std::string_view text, QueueEntry* out);

}  // namespace mailgate::queue
