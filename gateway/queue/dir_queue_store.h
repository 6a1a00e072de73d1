#pragma once
// The exception queue in a spool directory (queue.store: dir), shared safely by the
// gateway processes that point at the same directory on one host.
//
// Files, one entry = two files:
//   ID.msg               the message, written once (never rewritten) before the meta
//   ID~OWNER~UNTIL       the metadata (encodeQueueMeta); its name is the lease: OWNER
//                        (escaped to [A-Za-z0-9._-%]) and UNTIL (unix ms) of the gateway
//                        that holds it, "ID~~0" when nobody does
//   .*                   temporary files and leftovers of a crash: ignored, removed
//                        once older than kLeftoverAgeMs (so is an ID.msg without meta)
// Every file is written as a dot-temp file, fsync'd, renamed into place, and the
// directory fsync'd.
//
// Exactly one meta file exists per entry, and every change of its lease is a rename
// from its exact current name, so exactly one of two gateways that race for the same
// entry (free, or with a lease that ran out) wins: the other's rename finds no source.
// A claim reads the entry again after its rename, so it never works on a stale copy.
// update() swaps the new metadata in with renameat2(RENAME_EXCHANGE) on the lease's
// name: it fails (the lease is lost) once another gateway renamed the meta away, and
// a takeover after the swap carries the new metadata with it. open() checks that the
// file system supports the exchange.
//
// An entry whose lease ran out but that nobody took over is still its owner's
// (update(), renew() and remove() succeed for it). renew() is a rename from the
// lease's exact name to the same owner's name with the new expiry: it fails once
// another gateway renamed the meta away. retryNow() on an entry a live lease holds
// changes nothing (an attempt runs right now) and returns true.
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gateway/queue/queue_store.h"

namespace mailgate::queue {

class DirQueueStore final : public QueueStore {
 public:
  static constexpr int64_t kLeftoverAgeMs = 15 * 60 * 1000;

  // Creates dir (mode 0750) if absent; an error when it cannot be written or its file
  // system cannot exchange two names atomically. Removes old leftovers.
  static Result<std::shared_ptr<DirQueueStore>> open(const std::string& dir, uint64_t max_entries,
                                                     uint64_t max_size);

  std::string_view kind() const override { return "dir"; }
  const std::string& dir() const { return dir_; }

  Put put(QueueEntry entry, const filters::MessageBody& body, std::string* error) override;
  Result<std::vector<QueueEntry>> claimDue(const std::string& owner, int64_t now_ms, int64_t lease_ms,
                                           size_t limit) override;
  Result<std::shared_ptr<const filters::MessageBody>> body(const std::string& id) override;
  Result<bool> update(const QueueEntry& entry, const std::string& owner, bool release) override;
  Result<bool> renew(const std::string& id, const std::string& owner, int64_t now_ms, int64_t until_ms) override;
  Result<bool> remove(const std::string& id, const std::string& owner) override;
  Result<std::vector<QueueEntry>> list(size_t limit) override;
  Result<std::optional<QueueEntry>> get(const std::string& id) override;
  Result<bool> retryNow(const std::string& id) override;
  Result<QueueSummary> summary() override;
  Result<std::vector<QueueEntry>> findByMessage(const std::string& message_id,
                                                const std::string& mail_from) override;

  // Removes temporary files and messages without metadata last modified before
  // cutoff_ms; returns how many. open() and claimDue() call it (the latter at most
  // once a minute) with now - kLeftoverAgeMs.
  Result<size_t> cleanup(int64_t cutoff_ms);

  // The name of an entry's metadata file for a lease (owner empty: none).
  static std::string metaName(const std::string& id, const std::string& owner, int64_t until_ms);

 private:
  struct Meta {
    std::string name;  // the file's name in dir_
    std::string id;
    std::string owner;
    int64_t until_ms = 0;
  };
  struct Scan {
    std::vector<Meta> metas;
    std::vector<std::string> msgs;  // ids with an ID.msg
    std::vector<std::string> junk;  // names starting with '.'
  };
  // What claimDue needs to know of a meta file, valid while the file is the same.
  struct Cached {
    uint64_t ino = 0, size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    int64_t created_ms = 0, next_ms = 0;
    uint64_t msg_size = 0;
  };

  DirQueueStore(std::string dir, uint64_t max_entries, uint64_t max_size)
      : dir_(std::move(dir)), max_entries_(max_entries), max_size_(max_size) {}
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  static bool parseMetaName(const std::string& name, Meta* out);
  Result<Scan> scan() const;
  // The entry in the meta file `m` (its lease as the name says); an error "gone"
  // when the file is no longer there.
  Result<QueueEntry> readMeta(const Meta& m) const;
  // readMeta through the cache (claimDue's and summary()'s scans).
  Result<Cached> readCached(const Meta& m);
  Result<std::optional<Meta>> findMeta(const std::string& id) const;
  // A fsync'd dot-temp file holding `data` (or the body); returns its name.
  Result<std::string> writeTemp(std::string_view data, const filters::MessageBody* body) const;
  // Swaps `data` in as the content of meta file `name`: false when `name` is gone.
  Result<bool> exchange(const std::string& name, const std::string& data) const;
  std::string uniqueSuffix() const;
  bool fsyncDir() const;

  std::string dir_;
  uint64_t max_entries_, max_size_;
  std::mutex mu_;  // guards cache_, message_keys_ and last_cleanup_ms_
  std::unordered_map<std::string, Cached> cache_;
  // id -> (Message-ID, sender) of the entries findByMessage has read (both never
  // change for an id); pruned to the entries present at each lookup.
  std::unordered_map<std::string, std::pair<std::string, std::string>> message_keys_;
  int64_t last_cleanup_ms_ = 0;
};

}  // namespace mailgate::queue
