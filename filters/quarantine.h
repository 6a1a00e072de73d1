#pragma once
// The quarantine: messages a data-stage verdict held back (a policy rule, DLP, a
// milter). Quarantined means accepted: the session answers 250 only once put() has
// returned, and put() returns only once the entry is durable (dir: the file and its
// directory fsync'd; postgres: the transaction committed). An entry leaves the store
// when an operator releases it (it is then delivered to its storage node, once),
// deletes it, or when it is older than the retention.
//
// Every call blocks (disk or database): call it on the content executor or the admin
// thread, never on a reactor. Implementations are thread-safe.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "filters/message_body.h"
#include "gateway/core/result.h"

namespace mailgate::filters {

struct QuarantineEntry {
  std::string id;          // [0-9a-f]{24}: the creation time and randomness
  int64_t created_ms = 0;  // unix time
  std::string reason;      // the verdict's reason
  std::string filter;      // the filter or scanner that decided
  std::string ref;         // the verdict's reference (also in the log line)
  // The envelope.
  std::string mail_from;           // "<...>" as the client sent it
  std::vector<std::string> rcpts;  // "<...>" as the client sent them (accepted ones)
  std::string client_ip;
  std::string helo;
  std::string user;  // authenticated user, or empty
  std::string listener;
  std::string session_id;
  bool smtputf8 = false;
  bool body_8bit = false;
  uint64_t size = 0;  // octets of the stored message
  // Recipients a release already delivered to (a partial release): never again.
  std::vector<std::string> delivered;
};

struct QuarantineFilter {
  std::string rcpt;       // substring of a recipient (case-insensitive), or empty
  std::string from;       // substring of the sender (case-insensitive), or empty
  int64_t before_ms = 0;  // created before this (0 = any)
};

struct QuarantineStats {
  std::atomic<uint64_t> stored{0};
  std::atomic<uint64_t> failures{0};  // puts that failed (the client got 451)
  std::atomic<int64_t> entries{0};    // entries in the store, as last counted plus changes since
  std::atomic<uint64_t> released{0};
  std::atomic<uint64_t> deleted{0};  // by an operator
  std::atomic<uint64_t> expired{0};  // by the retention sweep
};
QuarantineStats& quarantineStats();

class QuarantineStore {
 public:
  enum class Claim { kClaimed, kNotFound, kBusy, kError };  // kError: the store did not answer

  virtual ~QuarantineStore() = default;
  virtual std::string_view kind() const = 0;  // "dir" | "postgres"
  // Writes the entry (id, created_ms and size are set here) and body; returns the
  // id once it is durable.
  virtual Result<std::string> put(QuarantineEntry meta, const MessageBody& body) = 0;
  // The newest first, at most limit.
  virtual Result<std::vector<QuarantineEntry>> list(const QuarantineFilter& filter, size_t limit) = 0;
  // The entry and its message; an error "not found" when there is none.
  virtual Result<QuarantineEntry> get(const std::string& id, std::shared_ptr<const MessageBody>* body) = 0;
  // false when there was no such entry.
  virtual Result<bool> remove(const std::string& id) = 0;
  // Deletes the entries created before cutoff_ms; returns how many.
  virtual Result<size_t> expire(int64_t cutoff_ms) = 0;
  virtual Result<size_t> count() = 0;
  // A release takes the entry for itself first: a second release of the same id
  // while one runs is refused (kBusy) instead of delivering twice. unclaim() after a
  // release that did not remove the entry.
  virtual Claim claim(const std::string& id) = 0;
  virtual void unclaim(const std::string& id) = 0;
  // Records the recipients a partial release delivered to.
  virtual Result<bool> setDelivered(const std::string& id, const std::vector<std::string>& delivered) = 0;
};

// A fresh entry id: 24 hex digits (creation time in ms, then 64 random bits).
std::string newQuarantineId(int64_t now_ms);
bool validQuarantineId(std::string_view id);
int64_t wallMs();

// The entry's metadata as the dir store keeps it: "key: value" lines (values
// %-escaped), an empty line. Parsing is pure: false on anything malformed.
std::string encodeQuarantineMeta(const QuarantineEntry& e);
bool decodeQuarantineMeta(std::string_view text, QuarantineEntry* out);

// One file per entry in `dir`: ID.msg = the metadata header, an empty line, the
// message. Written as .tmp-ID, fsync'd, renamed, the directory fsync'd. Files
// whose name starts with '.' are ignored by list() (a crash mid-write) and removed
// by expire() once older than the cutoff.
class DirQuarantineStore final : public QuarantineStore {
 public:
  // Creates dir (mode 0750) if absent; an error when it cannot be written.
  static Result<std::shared_ptr<DirQuarantineStore>> open(const std::string& dir);
  std::string_view kind() const override { return "dir"; }
  const std::string& dir() const { return dir_; }
  Result<std::string> put(QuarantineEntry meta, const MessageBody& body) override;
  Result<std::vector<QuarantineEntry>> list(const QuarantineFilter& filter, size_t limit) override;
  Result<QuarantineEntry> get(const std::string& id, std::shared_ptr<const MessageBody>* body) override;
  Result<bool> remove(const std::string& id) override;
  Result<size_t> expire(int64_t cutoff_ms) override;
  Result<size_t> count() override;
  Claim claim(const std::string& id) override;
  void unclaim(const std::string& id) override;
  Result<bool> setDelivered(const std::string& id, const std::vector<std::string>& delivered) override;

 private:
  explicit DirQuarantineStore(std::string dir) : dir_(std::move(dir)) {}
  std::string path(const std::string& id) const { return dir_ + "/" + id + ".msg"; }
  // Writes header + the body's octets from body_off to a temp file, durably renamed to ID.msg.
  Result<bool> writeDurably(const std::string& id, const std::string& header, const MessageBody& body,
                            uint64_t body_off);
  Result<QuarantineEntry> readMeta(const std::string& id, uint64_t* body_off);

  std::string dir_;
  std::mutex claims_mu_;
  std::set<std::string> claims_;  // ids a release holds
};

bool quarantineMatches(const QuarantineEntry& e, const QuarantineFilter& f);

}  // namespace mailgate::filters
