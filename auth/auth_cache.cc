#include "auth/auth_cache.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <random>
#include <utility>

#include "gateway/core/ascii.h"

namespace mailgate::auth {
namespace {

bool cacheable(const AuthResult& r) { return !r.backend_password && !r.backend_user; }

// The entry's route hint was read before the caller's map last changed.
bool hintOlderThanMap(const AuthResult& r, std::chrono::steady_clock::time_point asked,
                      const filters::SessionFacts* facts) {
  return r.route && facts && facts->route_map > asked;
}

}  // namespace

CachingDirectory::CachingDirectory(std::shared_ptr<Directory> inner, conf::CacheConfig cfg)
    : CachingDirectory(std::move(inner), cfg, [] { return std::chrono::steady_clock::now(); }) {}

CachingDirectory::CachingDirectory(std::shared_ptr<Directory> inner, conf::CacheConfig cfg, Clock clock,
                                   std::size_t max_entries, std::size_t max_negative_entries)
    : inner_(std::move(inner)),
      cfg_(cfg),
      clock_(std::move(clock)),
      entries_(max_entries),
      negative_entries_(max_negative_entries),
      rcpt_entries_(max_entries) {
  if (RAND_bytes(hmac_key_, sizeof hmac_key_) != 1) {
    // No usable CSPRNG: fall back to random_device (still never stores the password).
    std::random_device rd;
    for (unsigned char& b : hmac_key_) b = static_cast<unsigned char>(rd());
  }
}

std::string CachingDirectory::key(std::string_view user, std::string_view password) const {
  std::string k = ascii::lower(user);
  std::string msg = k;
  msg.push_back('\0');
  msg.append(password);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), hmac_key_, sizeof hmac_key_, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
       mac, &len);
  OPENSSL_cleanse(msg.data(), msg.size());
  k.push_back('\0');
  k.append(reinterpret_cast<const char*>(mac), len);
  return k;
}

AuthResult CachingDirectory::authenticate(std::string_view user, std::string_view password) {
  return lookup(user, password, nullptr);
}

AuthResult CachingDirectory::authenticate(std::string_view user, std::string_view password,
                                          const filters::SessionFacts& facts) {
  return lookup(user, password, &facts);
}

AuthResult CachingDirectory::lookup(std::string_view user, std::string_view password,
                                    const filters::SessionFacts* facts) {
  if (cfg_.ttl.count() <= 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++misses_;
    }
    return facts ? inner_->authenticate(user, password, *facts) : inner_->authenticate(user, password);
  }
  const std::string k = key(user, password);
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Entry* e = entries_.find(k);
    if (e == nullptr) e = negative_entries_.find(k);
    if (e && clock_() < e->expires && !hintOlderThanMap(e->result, e->asked, facts)) {
      ++hits_;
      return e->result;
    }
    ++misses_;
  }
  const auto asked = clock_();
  AuthResult r = facts ? inner_->authenticate(user, password, *facts) : inner_->authenticate(user, password);
  const auto now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  switch (r.verdict) {
    case Verdict::kTempFail: {
      if (const Entry* e = entries_.find(k); e && e->result.verdict == Verdict::kOk && now < e->stale_until) {
        ++stale_hits_;
        AuthResult stale = e->result;
        if (hintOlderThanMap(stale, e->asked, facts)) stale.route.reset();  // the newer map routes it
        return stale;
      }
      return r;
    }
    case Verdict::kOk:
    case Verdict::kBadPassword:
    case Verdict::kUnknownUser:
      if (cacheable(r)) store(k, r, asked, now);
      return r;
  }
  return r;
}

void CachingDirectory::store(const std::string& k, const AuthResult& r, std::chrono::steady_clock::time_point asked,
                             std::chrono::steady_clock::time_point now) {
  const bool positive = r.verdict == Verdict::kOk;
  // The answer replaces any entry of the other kind: a positive entry for a password
  // now refused must not be honoured during a later outage.
  if (positive)
    negative_entries_.erase(k);
  else
    entries_.erase(k);
  if (!positive && cfg_.negative_ttl.count() <= 0) return;  // negative entries disabled
  Entry& e = positive ? entries_.put(k) : negative_entries_.put(k);
  e.result = r;
  e.result.wait = std::chrono::milliseconds(0);
  e.asked = asked;
  if (positive) {
    e.expires = now + cfg_.ttl;
    e.stale_until = now + kStaleLimit;
  } else {
    e.expires = now + cfg_.negative_ttl;
    e.stale_until = now;
  }
}

RecipientAnswer CachingDirectory::lookupRecipient(std::string_view address,
                                                  const filters::SessionFacts& facts) {
  if (cfg_.ttl.count() <= 0) {  // ttl 0 disables the cache, as for logins
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++rcpt_misses_;
    }
    return inner_->lookupRecipient(address, facts);
  }
  const std::string k = ascii::lower(address);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (const RecipientEntry* e = rcpt_entries_.find(k); e && clock_() < e->expires) {
      ++rcpt_hits_;
      return e->answer;
    }
    ++rcpt_misses_;
  }
  const RecipientAnswer answer = inner_->lookupRecipient(address, facts);
  const RecipientResult r = answer.result;
  conf::Duration ttl{0};
  switch (r) {
    case RecipientResult::kLocal:
      ttl = cfg_.ttl;
      break;
    case RecipientResult::kUnknownMailbox:
    case RecipientResult::kForeignDomain:
      ttl = cfg_.negative_ttl;
      break;
    case RecipientResult::kTempFail:
      return answer;
  }
  const auto now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  if (ttl.count() <= 0) {
    rcpt_entries_.erase(k);  // not kept: an older answer for this address is no longer true either
    return answer;
  }
  RecipientEntry& e = rcpt_entries_.put(k);
  e.answer = answer;
  e.expires = now + ttl;
  return answer;
}

std::string CachingDirectory::statsText() const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = "auth_cache_hits=" + std::to_string(hits_) + " auth_cache_misses=" + std::to_string(misses_) +
          " auth_cache_stale_hits=" + std::to_string(stale_hits_) +
          " auth_cache_entries=" + std::to_string(entries_.size() + negative_entries_.size()) +
          " auth_cache_negative_entries=" + std::to_string(negative_entries_.size()) +
          " rcpt_cache_hits=" + std::to_string(rcpt_hits_) +
          " rcpt_cache_misses=" + std::to_string(rcpt_misses_) +
          " rcpt_cache_entries=" + std::to_string(rcpt_entries_.size());
  }
  std::string inner = inner_->statsText();
  if (!inner.empty()) out += " " + inner;
  return out;
}

uint64_t CachingDirectory::hits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return hits_;
}
uint64_t CachingDirectory::misses() const {
  std::lock_guard<std::mutex> lock(mu_);
  return misses_;
}
uint64_t CachingDirectory::staleHits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stale_hits_;
}
std::size_t CachingDirectory::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size() + negative_entries_.size();
}
std::size_t CachingDirectory::negativeSize() const {
  std::lock_guard<std::mutex> lock(mu_);
  return negative_entries_.size();
}
uint64_t CachingDirectory::recipientHits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rcpt_hits_;
}
uint64_t CachingDirectory::recipientMisses() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rcpt_misses_;
}
std::size_t CachingDirectory::recipientSize() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rcpt_entries_.size();
}
void CachingDirectory::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.clear();
  negative_entries_.clear();
  rcpt_entries_.clear();
}

}  // namespace mailgate::auth
