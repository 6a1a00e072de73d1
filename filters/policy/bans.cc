#include "filters/policy/bans.h"
#include "gateway/core/wall_clock.h"

#include <algorithm>
#include <cmath>

namespace mailgate::filters::policy {

// An entry is a network's ban in force or its history: a ban has ended when it was
// lifted (active = false) or its time is over; an ended entry is kept until `forget`
// after its end so that the next ban of the same network escalates.
namespace {
// ttl × factor^(level - 1), capped at max (and at least 1 ms).
int64_t escalatedTtl(const BanParams& p, uint32_t level) {
  const double base = static_cast<double>(p.ttl.count());
  const double cap = static_cast<double>(p.max.count());
  double ttl = base * std::pow(p.factor < 1 ? 1.0 : p.factor, static_cast<double>(level - 1));
  if (!(ttl <= cap)) ttl = cap;  // also catches inf/NaN
  const int64_t ms = static_cast<int64_t>(ttl);
  return ms < 1 ? 1 : ms;
}

bool inForce(const Ban& b, bool active, int64_t now_ms) { return active && b.expires_ms > now_ms; }
}  // namespace

Ban BanTable::ban(const NetAddr& net, const BanParams& p, std::string reason, std::string origin,
                  int64_t now_ms) {
  Ban out;
  bool changed = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.ban.net == net; });
    if (it != entries_.end() && inForce(it->ban, it->active, now_ms)) {
      // Banned already: the level stays; the ban lasts until the later of the two ends.
      const int64_t until = now_ms + escalatedTtl(p, it->ban.level);
      if (until > it->ban.expires_ms) {
        it->ban.expires_ms = until;
        it->ban.reason = std::move(reason);
        it->ban.origin = std::move(origin);
      } else {
        changed = false;
      }
      out = it->ban;
    } else {
      uint32_t level = 1;
      // Ended earlier: a repeat within `forget` of that end escalates.
      if (it != entries_.end() && now_ms - it->ban.expires_ms <= p.forget.count() && it->ban.level < UINT32_MAX)
        level = it->ban.level + 1;
      Ban b;
      b.net = net;
      b.created_ms = now_ms;
      b.expires_ms = now_ms + escalatedTtl(p, level);
      b.level = level;
      b.reason = std::move(reason);
      b.origin = std::move(origin);
      if (it != entries_.end())
        *it = Entry{b, true};
      else
        entries_.push_back(Entry{b, true});
      out = std::move(b);
    }
  }
  if (changed && listener_) listener_(out, false);
  return out;
}

Ban BanTable::banFor(const NetAddr& net, std::chrono::milliseconds ttl, std::string reason, std::string origin,
                     int64_t now_ms) {
  Ban b;
  b.net = net;
  b.created_ms = now_ms;
  b.expires_ms = now_ms + std::max<int64_t>(ttl.count(), 1);
  b.reason = std::move(reason);
  b.origin = std::move(origin);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.ban.net == net; });
    if (it != entries_.end()) {
      b.level = it->ban.level;  // kept, so a later automatic ban escalates from it
      *it = Entry{b, true};
    } else {
      entries_.push_back(Entry{b, true});
    }
  }
  if (listener_) listener_(b, false);
  return b;
}

bool BanTable::lift(const NetAddr& net, int64_t now_ms) {
  Ban b;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.ban.net == net; });
    if (it == entries_.end() || !inForce(it->ban, it->active, now_ms)) return false;
    // Kept as history: it ended now.
    it->active = false;
    it->ban.expires_ms = now_ms;
    it->lifted_ms = now_ms;
    lifts_.fetch_add(1, std::memory_order_relaxed);
    b = it->ban;
  }
  if (listener_) listener_(b, true);
  return true;
}

bool BanTable::find(const NetAddr& addr, int64_t now_ms, Ban* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* best = nullptr;
  for (const Entry& e : entries_) {
    if (!inForce(e.ban, e.active, now_ms) || !e.ban.net.contains(addr)) continue;
    if (!best || e.ban.net.prefix > best->ban.net.prefix) best = &e;
  }
  if (!best) return false;
  if (out) *out = best->ban;
  return true;
}

std::vector<Ban> BanTable::list(int64_t now_ms) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Ban> r;
  for (const Entry& e : entries_)
    if (inForce(e.ban, e.active, now_ms)) r.push_back(e.ban);
  return r;
}

size_t BanTable::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<size_t>(std::count_if(entries_.begin(), entries_.end(), [](const Entry& e) { return e.active; }));
}

void BanTable::replaceAll(const std::vector<Ban>& bans) {
  std::vector<Entry> fresh;
  fresh.reserve(bans.size());
  for (const Ban& b : bans) {
    auto it = std::find_if(fresh.begin(), fresh.end(), [&](const Entry& e) { return e.ban.net == b.net; });
    if (it == fresh.end())
      fresh.push_back(Entry{b, true});
    else if (b.created_ms >= it->ban.created_ms)
      *it = Entry{b, true};  // the newer of two rows for one network
  }
  std::lock_guard<std::mutex> lock(mu_);
  // What the table had and the cluster no longer has: its history is kept (for the
  // escalation), and a ban still in force here was lifted elsewhere meanwhile.
  const int64_t now = wallMs();
  for (Entry& old : entries_) {
    if (std::any_of(fresh.begin(), fresh.end(), [&](const Entry& e) { return e.ban.net == old.ban.net; })) continue;
    if (old.active) {
      old.active = false;
      if (old.ban.expires_ms > now) {
        old.ban.expires_ms = now;
        old.lifted_ms = now;
        lifts_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    fresh.push_back(old);
  }
  entries_.swap(fresh);
}

void BanTable::apply(const Ban& ban, bool lifted) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.ban.net == ban.net; });
  const int64_t lifted_ms = lifted ? wallMs() : 0;
  if (lifted) lifts_.fetch_add(1, std::memory_order_relaxed);
  if (it == entries_.end()) {
    entries_.push_back(Entry{ban, !lifted, lifted_ms});  // a lift of an unknown ban is still history
    return;
  }
  it->ban = ban;
  it->active = !lifted;
  if (lifted) it->lifted_ms = lifted_ms;
}

int64_t BanTable::liftedAt(const NetAddr& addr) const {
  if (lifts_.load(std::memory_order_relaxed) == 0) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  int64_t at = 0;
  for (const Entry& e : entries_)
    if (e.lifted_ms > at && e.ban.net.contains(addr)) at = e.lifted_ms;
  return at;
}

void BanTable::expire(int64_t now_ms, std::chrono::milliseconds forget) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Entry& e : entries_)
    if (e.ban.expires_ms <= now_ms) e.active = false;
  std::erase_if(entries_, [&](const Entry& e) { return !e.active && now_ms - e.ban.expires_ms > forget.count(); });
}

int64_t BanTable::wallMs() { return core::wallMs(); }

}  // namespace mailgate::filters::policy
