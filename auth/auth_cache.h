#pragma once
// An authentication cache in front of any Directory (directory.cache).
//
// Entries are keyed by the lower-case user name and HMAC-SHA256(k, user NUL password)
// with a random key k made once per process: the password itself is never stored,
// and a cache hit costs neither a directory round trip nor a password-scheme hash.
//
//   kOk                        → positive entry, valid for cache.ttl
//   kBadPassword, kUnknownUser → negative entry, valid for cache.negative_ttl
//   kTempFail                  → never stored
//
// A changed password or a disabled mailbox therefore takes effect at the latest when
// the entry expires. Outage rule: when the inner directory answers kTempFail, an
// expired positive entry for the same user and password is still honoured, for at
// most kStaleLimit (24 h) after it was last confirmed by the directory ("entries
// still in the cache keep working"). Results that carry backend credentials are
// never cached. ttl 0 disables the cache (every call goes to the directory);
// negative_ttl 0 disables negative entries.
//
// Route hints (AuthResult::route) are never preferred over a newer routing map: an
// entry remembers when its directory call started, and a hit whose hint is older than
// the caller's map (SessionFacts::route_map, the time that map last changed) is a miss
// (the directory is asked again, so a changed route reaches new sessions as soon as
// the map has been reloaded). If the directory then answers kTempFail, the entry is
// used as above but without its hint: the newer map routes the session.
//
// Positive and negative entries live in two tables, each bounded (max_entries,
// default 100k, and max_negative_entries, default 10k); when one is full, its entry
// stored longest ago is evicted. A password-spraying client fills only the negative
// table: it never evicts the positive entries the outage rule depends on. A key is in
// at most one of them (a new answer replaces the other kind's entry). Thread-safe;
// the inner call runs outside the lock.
//
// Recipient answers (the MX's RCPT check) have a table of their own, keyed by the
// lower-case address and bounded the same way: kLocal is kept for cache.ttl,
// kUnknownMailbox and kForeignDomain for cache.negative_ttl, kTempFail never (and
// no stale answers during an outage: the MX answers 451 and the sender retries).
// A new mailbox is therefore accepted at the latest negative_ttl after it was
// refused; a removed one is refused at the latest ttl after it was accepted.
// Sender checks (submission) are not cached.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "auth/directory.h"
#include "conf/config.h"

namespace mailgate::auth {

// A map bounded to `max` entries that forgets the one stored or refreshed longest ago.
// Not thread-safe (the cache's mutex guards it).
template <typename V>
class LruMap {
 public:
  explicit LruMap(std::size_t max) : max_(max ? max : 1) {}
  V* find(const std::string& k) {
    auto it = map_.find(k);
    return it == map_.end() ? nullptr : &it->second.value;
  }
  // The value under k, now the most recent; a new one (evicting the oldest when full)
  // if k was not there.
  V& put(const std::string& k) {
    auto it = map_.find(k);
    if (it != map_.end()) {
      order_.splice(order_.end(), order_, it->second.pos);
      return it->second.value;
    }
    while (map_.size() >= max_ && !order_.empty()) {
      map_.erase(order_.front());
      order_.pop_front();
    }
    order_.push_back(k);
    it = map_.emplace(k, Slot{V{}, std::prev(order_.end())}).first;
    return it->second.value;
  }
  void erase(const std::string& k) {
    auto it = map_.find(k);
    if (it == map_.end()) return;
    order_.erase(it->second.pos);
    map_.erase(it);
  }
  std::size_t size() const { return map_.size(); }
  void clear() {
    map_.clear();
    order_.clear();
  }

 private:
  struct Slot {
    V value;
    std::list<std::string>::iterator pos;
  };
  std::size_t max_;
  std::unordered_map<std::string, Slot> map_;
  std::list<std::string> order_;  // front = stored or refreshed longest ago
};

class CachingDirectory : public Directory {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  static constexpr std::size_t kDefaultMaxEntries = 100000;
  static constexpr std::size_t kDefaultMaxNegativeEntries = 10000;
  static constexpr std::chrono::hours kStaleLimit{24};

  CachingDirectory(std::shared_ptr<Directory> inner, conf::CacheConfig cfg);
  // Tests: an injectable clock and bounds (max_entries bounds the positive login
  // entries and the recipient table, max_negative_entries the negative login entries).
  CachingDirectory(std::shared_ptr<Directory> inner, conf::CacheConfig cfg, Clock clock,
                   std::size_t max_entries = kDefaultMaxEntries,
                   std::size_t max_negative_entries = kDefaultMaxNegativeEntries);

  AuthResult authenticate(std::string_view user, std::string_view password) override;
  AuthResult authenticate(std::string_view user, std::string_view password,
                          const filters::SessionFacts& facts) override;
  RecipientResult recipient(std::string_view address) override {
    return recipient(address, filters::SessionFacts{});
  }
  // Cached by address alone: a driver whose answer depends on the client should run
  // with cache.ttl 0.
  RecipientResult recipient(std::string_view address, const filters::SessionFacts& facts) override {
    return lookupRecipient(address, facts).result;
  }
  RecipientAnswer lookupRecipient(std::string_view address, const filters::SessionFacts& facts) override;
  // Not cached: the inner directory answers.
  SenderResult senderAllowed(std::string_view user, std::string_view address) override {
    return inner_->senderAllowed(user, address);
  }
  // "auth_cache_hits=.. auth_cache_misses=.. auth_cache_stale_hits=.. auth_cache_entries=..
  // auth_cache_negative_entries=.. rcpt_cache_hits=.. rcpt_cache_misses=.. rcpt_cache_entries=.."
  // followed by the inner directory's counters (auth_cache_entries counts both kinds).
  std::string statsText() const override;

  uint64_t hits() const;
  uint64_t misses() const;
  uint64_t staleHits() const;
  std::size_t size() const;           // login entries, positive and negative
  std::size_t negativeSize() const;   // negative login entries
  uint64_t recipientHits() const;
  uint64_t recipientMisses() const;
  std::size_t recipientSize() const;
  void clear();

 private:
  struct Entry {
    AuthResult result;
    std::chrono::steady_clock::time_point expires;
    std::chrono::steady_clock::time_point stale_until;  // positive entries only
    std::chrono::steady_clock::time_point asked;        // when the directory call started
  };

  struct RecipientEntry {
    RecipientAnswer answer;
    std::chrono::steady_clock::time_point expires;
  };

  AuthResult lookup(std::string_view user, std::string_view password, const filters::SessionFacts* facts);
  std::string key(std::string_view user, std::string_view password) const;
  void store(const std::string& k, const AuthResult& r, std::chrono::steady_clock::time_point asked,
             std::chrono::steady_clock::time_point now);

  std::shared_ptr<Directory> inner_;
  conf::CacheConfig cfg_;
  Clock clock_;
  unsigned char hmac_key_[32];

  mutable std::mutex mu_;
  LruMap<Entry> entries_;           // positive: the least recently confirmed goes first
  LruMap<Entry> negative_entries_;  // negative, bounded on their own
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  uint64_t stale_hits_ = 0;

  LruMap<RecipientEntry> rcpt_entries_;
  uint64_t rcpt_hits_ = 0;
  uint64_t rcpt_misses_ = 0;
};

}  // namespace mailgate::auth
