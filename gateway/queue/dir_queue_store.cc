#include "gateway/queue/dir_queue_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE, RENAME_NOREPLACE
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <unordered_set>

#include "gateway/core/durable_file.h"
#include "gateway/core/record_text.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::queue {

namespace {
constexpr size_t kChunk = 64 * 1024;
constexpr size_t kMaxMeta = 16u << 20;  // a meta file larger than this is malformed
constexpr size_t kMaxOwner = 128;       // escaped, in a file name
constexpr int64_t kCleanupEveryMs = 60 * 1000;
constexpr int kRaceRetries = 8;  // renames that lost a race with another gateway

std::string sysError(const std::string& what, int e) { return what + ": " + std::strerror(e); }

using core::wallMs;

bool nameSafe(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

// rename that never replaces: the target exists -> EEXIST.
int renameNoReplace(const std::string& from, const std::string& to) {
  return ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE);
}

int64_t statNs(const timespec& t) { return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec; }

bool sortOldest(const QueueEntry& a, const QueueEntry& b) {
  return a.created_ms != b.created_ms ? a.created_ms < b.created_ms : a.id < b.id;
}

bool parseMs(std::string_view s, int64_t* out) {
  uint64_t v = 0;
  if (!core::parseDecimal(s, static_cast<uint64_t>(INT64_MAX), false, &v)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

// --- names ----------------------------------------------------------------------

std::string DirQueueStore::metaName(const std::string& id, const std::string& owner, int64_t until_ms) {
  if (owner.empty()) return id + "~~0";
  return id + "~" + core::percentEscape(owner, nameSafe) + "~" + std::to_string(until_ms < 0 ? 0 : until_ms);
}

bool DirQueueStore::parseMetaName(const std::string& name, Meta* out) {
  const size_t a = name.find('~');
  if (a == std::string::npos) return false;
  const size_t b = name.find('~', a + 1);
  if (b == std::string::npos || name.find('~', b + 1) != std::string::npos) return false;
  out->name = name;
  out->id = name.substr(0, a);
  if (!validQueueId(out->id)) return false;
  if (!core::percentUnescape(std::string_view(name).substr(a + 1, b - a - 1), nameSafe, &out->owner))
    return false;
  if (!parseMs(std::string_view(name).substr(b + 1), &out->until_ms)) return false;
  if (out->owner.empty()) out->until_ms = 0;
  return true;
}

std::string DirQueueStore::uniqueSuffix() const {
  static std::atomic<uint64_t> seq{0};
  uint64_t rnd = 0;
  if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof rnd)) rnd = 0;
  return std::to_string(::getpid()) + "-" + std::to_string(seq.fetch_add(1)) + "-" + std::to_string(rnd);
}

bool DirQueueStore::fsyncDir() const { return core::fsyncDirectory(dir_); }

// --- open -----------------------------------------------------------------------

Result<std::shared_ptr<DirQueueStore>> DirQueueStore::open(const std::string& dir, uint64_t max_entries,
                                                           uint64_t max_size) {
  if (dir.empty() || dir[0] != '/') return Error{"queue.dir: an absolute path is needed"};
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return Error{sysError("queue.dir " + dir, errno)};
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
      return Error{sysError("queue.dir " + dir + ": cannot create it", errno)};
  } else if (!S_ISDIR(st.st_mode)) {
    return Error{"queue.dir " + dir + ": not a directory"};
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return Error{sysError("queue.dir " + dir + ": cannot write in it", errno)};
  auto store = std::shared_ptr<DirQueueStore>(new DirQueueStore(dir, max_entries, max_size));
  // The lease needs an atomic exchange of two names (Linux 3.15+: ext4, xfs, btrfs, tmpfs).
  auto a = store->writeTemp("probe", nullptr);
  if (!a) return Error{"queue.dir " + dir + ": " + a.error()};
  auto b = store->writeTemp("probe", nullptr);
  if (!b) {
    ::unlink(store->path(a.value()).c_str());
    return Error{"queue.dir " + dir + ": " + b.error()};
  }
  const int rc = ::renameat2(AT_FDCWD, store->path(a.value()).c_str(), AT_FDCWD,
                             store->path(b.value()).c_str(), RENAME_EXCHANGE);
  const int e = errno;
  ::unlink(store->path(a.value()).c_str());
  ::unlink(store->path(b.value()).c_str());
  if (rc != 0)
    return Error{sysError("queue.dir " + dir + ": the file system cannot exchange names (renameat2)", e)};
  if (auto c = store->cleanup(wallMs() - kLeftoverAgeMs); !c)
    return Error{"queue.dir " + dir + ": " + c.error()};
  return store;
}

// --- helpers --------------------------------------------------------------------

Result<DirQueueStore::Scan> DirQueueStore::scan() const {
  DIR* d = ::opendir(dir_.c_str());
  if (!d) return Error{sysError("opendir " + dir_, errno)};
  Scan s;
  errno = 0;
  while (dirent* de = ::readdir(d)) {
    std::string name = de->d_name;
    if (name == "." || name == "..") continue;
    if (name[0] == '.') {
      s.junk.push_back(std::move(name));
      continue;
    }
    Meta m;
    if (parseMetaName(name, &m)) {
      s.metas.push_back(std::move(m));
    } else if (name.size() > 4 && name.compare(name.size() - 4, 4, ".msg") == 0 &&
               validQueueId(std::string_view(name).substr(0, name.size() - 4))) {
      s.msgs.push_back(name.substr(0, name.size() - 4));
    }  // anything else is not ours: left alone
  }
  ::closedir(d);
  return s;
}

Result<QueueEntry> DirQueueStore::readMeta(const Meta& m) const {
  const int fd = ::open(path(m.name).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error{errno == ENOENT ? std::string("gone") : sysError("open " + path(m.name), errno)};
  std::string text;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      return Error{sysError("read " + path(m.name), e)};
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxMeta) break;
  }
  ::close(fd);
  QueueEntry e;
  if (!decodeQueueMeta(text, &e) || e.id != m.id) return Error{"malformed entry " + path(m.name)};
  e.lease_owner = m.owner;
  e.lease_until_ms = m.until_ms;
  return e;
}

Result<DirQueueStore::Cached> DirQueueStore::readCached(const Meta& m) {
  struct stat st {};
  if (::stat(path(m.name).c_str(), &st) != 0)
    return Error{errno == ENOENT ? std::string("gone") : sysError("stat " + path(m.name), errno)};
  Cached c;
  c.ino = st.st_ino;
  c.size = static_cast<uint64_t>(st.st_size);
  c.mtime_ns = statNs(st.st_mtim);
  c.ctime_ns = statNs(st.st_ctim);
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = cache_.find(m.name);
    if (it != cache_.end() && it->second.ino == c.ino && it->second.size == c.size &&
        it->second.mtime_ns == c.mtime_ns && it->second.ctime_ns == c.ctime_ns)
      return it->second;
  }
  auto e = readMeta(m);
  if (!e) return Error{e.error()};
  c.created_ms = e->created_ms;
  c.next_ms = e->next_ms;
  c.msg_size = e->size;
  std::lock_guard<std::mutex> g(mu_);
  cache_[m.name] = c;
  return c;
}

Result<std::optional<DirQueueStore::Meta>> DirQueueStore::findMeta(const std::string& id) const {
  if (!validQueueId(id)) return std::optional<Meta>();
  auto s = scan();
  if (!s) return Error{s.error()};
  for (auto& m : s->metas)
    if (m.id == id) return std::optional<Meta>(std::move(m));
  return std::optional<Meta>();
}

Result<std::string> DirQueueStore::writeTemp(std::string_view data, const filters::MessageBody* body) const {
  const std::string name = ".tmp-" + uniqueSuffix();
  const std::string tmp = path(name);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) return Error{sysError("create " + tmp, errno)};
  auto fail = [&](const std::string& what) -> Result<std::string> {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return Error{sysError(what + " " + tmp, e ? e : EIO)};
  };
  errno = 0;
  if (!core::writeAll(fd, data)) return fail("write");
  if (body) {
    std::string chunk;
    for (uint64_t off = 0; off < body->size();) {
      errno = 0;
      if (!body->read(off, kChunk, &chunk) || chunk.empty()) return fail("read the message for");
      if (!core::writeAll(fd, chunk)) return fail("write");
      off += chunk.size();
    }
  }
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return Error{sysError("close " + tmp, e)};
  }
  return name;
}

Result<bool> DirQueueStore::exchange(const std::string& name, const std::string& data) const {
  auto tmp = writeTemp(data, nullptr);
  if (!tmp) return Error{tmp.error()};
  const int rc =
      ::renameat2(AT_FDCWD, path(tmp.value()).c_str(), AT_FDCWD, path(name).c_str(), RENAME_EXCHANGE);
  const int e = errno;
  ::unlink(path(tmp.value()).c_str());  // the old content after a swap, the new one otherwise
  if (rc != 0) {
    if (e == ENOENT) return false;
    return Error{sysError("exchange " + path(name), e)};
  }
  if (!fsyncDir()) return Error{sysError("fsync " + dir_, errno)};
  return true;
}

// --- QueueStore -----------------------------------------------------------------

QueueStore::Put DirQueueStore::put(QueueEntry entry, const filters::MessageBody& body, std::string* error) {
  auto fail = [&](std::string why) {
    if (error) *error = std::move(why);
    return Put::kError;
  };
  if (!validQueueId(entry.id)) return fail("invalid queue id");
  if (entry.rcpts.empty()) return fail("no recipient");
  entry.size = body.size();
  entry.lease_owner.clear();
  entry.lease_until_ms = 0;
  if (entry.created_ms == 0) entry.created_ms = wallMs();
  {
    auto s = scan();
    if (!s) return fail(s.error());
    uint64_t bytes = 0;
    for (const auto& id : s->msgs) {
      struct stat st {};
      if (::stat(path(id + ".msg").c_str(), &st) == 0) bytes += static_cast<uint64_t>(st.st_size);
    }
    // A DSN is never refused for room: it lets the entry it reports on go.
    if (!entry.dsn &&
        (s->metas.size() + 1 > max_entries_ || bytes + entry.size > max_size_ || entry.size > max_size_))
      return Put::kFull;
  }
  // The message first (an ID.msg without meta is a leftover), then the meta.
  auto msg_tmp = writeTemp({}, &body);
  if (!msg_tmp) return fail(msg_tmp.error());
  const std::string msg = path(entry.id + ".msg");
  if (renameNoReplace(path(msg_tmp.value()), msg) != 0) {
    const int e = errno;
    ::unlink(path(msg_tmp.value()).c_str());
    return fail(e == EEXIST ? "queue id " + entry.id + " exists" : sysError("rename to " + msg, e));
  }
  auto meta_tmp = writeTemp(encodeQueueMeta(entry), nullptr);
  if (!meta_tmp) {
    ::unlink(msg.c_str());
    return fail(meta_tmp.error());
  }
  const std::string meta = path(metaName(entry.id, "", 0));
  if (renameNoReplace(path(meta_tmp.value()), meta) != 0) {
    const int e = errno;
    ::unlink(path(meta_tmp.value()).c_str());
    ::unlink(msg.c_str());
    return fail(sysError("rename to " + meta, e));
  }
  if (!fsyncDir()) {
    const int e = errno;
    // Not durable: take it back rather than have the client's 250 rest on it.
    ::unlink(meta.c_str());
    ::unlink(msg.c_str());
    return fail(sysError("fsync " + dir_, e));
  }
  return Put::kStored;
}

Result<std::vector<QueueEntry>> DirQueueStore::claimDue(const std::string& owner, int64_t now_ms,
                                                        int64_t lease_ms, size_t limit) {
  if (owner.empty()) return Error{"claimDue: an owner is needed"};
  if (core::percentEscape(owner, nameSafe).size() > kMaxOwner)
    return Error{"claimDue: the owner name is too long"};
  bool clean = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (now_ms - last_cleanup_ms_ >= kCleanupEveryMs) {
      last_cleanup_ms_ = now_ms;
      clean = true;
    }
  }
  if (clean) (void)cleanup(now_ms - kLeftoverAgeMs);  // best effort
  std::vector<QueueEntry> out;
  if (limit == 0) return out;
  auto s = scan();
  if (!s) return Error{s.error()};
  struct Candidate {
    const Meta* meta;
    int64_t created_ms;
  };
  std::vector<Candidate> due;
  std::unordered_set<std::string> live;
  for (const auto& m : s->metas) {
    live.insert(m.name);
    if (!m.owner.empty() && m.until_ms >= now_ms) continue;  // a live lease
    auto c = readCached(m);
    if (!c) continue;  // gone meanwhile, or malformed: not claimed
    if (c->next_ms <= now_ms) due.push_back({&m, c->created_ms});
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = cache_.begin(); it != cache_.end();)
      it = live.count(it->first) ? std::next(it) : cache_.erase(it);
  }
  std::sort(due.begin(), due.end(), [](const Candidate& a, const Candidate& b) {
    return a.created_ms != b.created_ms ? a.created_ms < b.created_ms : a.meta->id < b.meta->id;
  });
  const int64_t until = now_ms + std::max<int64_t>(lease_ms, 1);
  bool renamed = false;
  for (const auto& cand : due) {
    if (out.size() >= limit) break;
    Meta mine{metaName(cand.meta->id, owner, until), cand.meta->id, owner, until};
    if (mine.name == cand.meta->name) continue;  // the same owner, the same ms: it holds it already
    // The race: whoever renames the exact name first has it; the others find no source.
    if (renameNoReplace(path(cand.meta->name), path(mine.name)) != 0) continue;
    renamed = true;
    // Read again: what the scan saw may have changed before the rename.
    auto e = readMeta(mine);
    if (e && e->next_ms <= now_ms) {
      out.push_back(std::move(e.value()));
      continue;
    }
    // Not due after all (or unreadable): let go of it.
    (void)renameNoReplace(path(mine.name), path(e ? metaName(mine.id, "", 0) : cand.meta->name));
  }
  if (renamed) fsyncDir();  // best effort: a lease lost in a crash only frees the entry
  return out;
}

Result<std::shared_ptr<const filters::MessageBody>> DirQueueStore::body(const std::string& id) {
  if (!validQueueId(id)) return Error{"not found"};
  const std::string p = path(id + ".msg");
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error{errno == ENOENT ? std::string("not found") : sysError("open " + p, errno)};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return Error{sysError("fstat " + p, e)};
  }
  return std::shared_ptr<const filters::MessageBody>(
      std::make_shared<filters::FileBody>(fd, static_cast<uint64_t>(st.st_size)));
}

Result<bool> DirQueueStore::update(const QueueEntry& entry, const std::string& owner, bool release) {
  if (owner.empty() || !validQueueId(entry.id)) return false;
  Meta m;
  m.id = entry.id;
  m.owner = owner;
  m.until_ms = entry.lease_until_ms;
  m.name = metaName(entry.id, owner, entry.lease_until_ms);
  for (int round = 0; round < 2; ++round) {
    auto cur = readMeta(m);
    if (!cur) {
      if (cur.error() != "gone") return Error{cur.error()};
      if (round == 1) return false;
      // Not under the name the entry says: the lease may still be ours under another
      // expiry (the caller changed lease_until_ms); never anyone else's.
      auto f = findMeta(entry.id);
      if (!f) return Error{f.error()};
      if (!f.value() || f.value()->owner != owner) return false;
      m = std::move(*f.value());
      continue;
    }
    // Only what a delivery attempt changes; the envelope and the message stay.
    QueueEntry next = std::move(cur.value());
    next.rcpts = entry.rcpts;
    next.attempts = entry.attempts;
    next.next_ms = entry.next_ms;
    next.lease_owner = release ? std::string() : owner;
    next.lease_until_ms = release ? 0 : m.until_ms;
    auto ok = exchange(m.name, encodeQueueMeta(next));
    if (!ok || !ok.value()) return ok;  // an error, or the lease was lost
    if (release) {
      // The write is done (the lease held at the swap); if another gateway took the
      // entry over since, it has the new metadata and the lease.
      if (renameNoReplace(path(m.name), path(metaName(entry.id, "", 0))) == 0) fsyncDir();
    }
    return true;
  }
  return false;
}

Result<bool> DirQueueStore::renew(const std::string& id, const std::string& owner, int64_t now_ms,
                                  int64_t until_ms) {
  (void)now_ms;  // a lease that ran out but that nobody took is still the owner's (see the header)
  if (owner.empty() || !validQueueId(id)) return false;
  if (core::percentEscape(owner, nameSafe).size() > kMaxOwner) return false;
  for (int round = 0; round < kRaceRetries; ++round) {
    auto f = findMeta(id);
    if (!f) return Error{f.error()};
    if (!f.value() || f.value()->owner != owner) return false;  // gone, or taken over
    const Meta& cur = *f.value();
    const std::string next = metaName(id, owner, until_ms);
    if (next == cur.name) return true;
    // From the exact current name: a gateway that took the entry over meanwhile
    // renamed it away, and this rename finds no source.
    if (renameNoReplace(path(cur.name), path(next)) != 0) {
      if (errno == ENOENT) continue;  // renamed under us: look again (ours no more, most likely)
      return Error{sysError("rename " + path(cur.name), errno)};
    }
    if (!fsyncDir()) return Error{sysError("fsync " + dir_, errno)};
    return true;
  }
  return false;
}

Result<bool> DirQueueStore::remove(const std::string& id, const std::string& owner) {
  if (!validQueueId(id)) return false;
  for (int round = 0; round < kRaceRetries; ++round) {
    auto f = findMeta(id);
    if (!f) return Error{f.error()};
    if (!f.value()) {
      // No meta: a leftover message (a crash mid-remove) goes too, but counts as none.
      if (owner.empty()) ::unlink(path(id + ".msg").c_str());
      return false;
    }
    if (!owner.empty() && f.value()->owner != owner) return false;  // the lease was lost
    const std::string hidden = ".del-" + uniqueSuffix();
    if (::rename(path(f.value()->name).c_str(), path(hidden).c_str()) != 0) {
      if (errno != ENOENT) return Error{sysError("rename " + path(f.value()->name), errno)};
      if (!owner.empty()) return false;  // renamed away under us: taken over
      continue;                          // an operator's delete raced a claim: look again
    }
    ::unlink(path(id + ".msg").c_str());
    ::unlink(path(hidden).c_str());
    if (!fsyncDir()) return Error{sysError("fsync " + dir_, errno)};
    return true;
  }
  return Error{"remove " + id + ": the entry kept changing"};
}

Result<std::vector<QueueEntry>> DirQueueStore::list(size_t limit) {
  auto s = scan();
  if (!s) return Error{s.error()};
  std::vector<QueueEntry> out;
  for (const auto& m : s->metas) {
    auto e = readMeta(m);
    if (e) out.push_back(std::move(e.value()));  // gone meanwhile or malformed: not listed
  }
  std::sort(out.begin(), out.end(), sortOldest);
  if (out.size() > limit) out.resize(limit);
  return out;
}

Result<std::optional<QueueEntry>> DirQueueStore::get(const std::string& id) {
  for (int round = 0; round < kRaceRetries; ++round) {
    auto f = findMeta(id);
    if (!f) return Error{f.error()};
    if (!f.value()) return std::optional<QueueEntry>();
    auto e = readMeta(*f.value());
    if (e) return std::optional<QueueEntry>(std::move(e.value()));
    if (e.error() != "gone") return Error{e.error()};
  }
  return Error{"get " + id + ": the entry kept changing"};
}

Result<bool> DirQueueStore::retryNow(const std::string& id) {
  const std::string me = "retry-now." + uniqueSuffix();
  for (int round = 0; round < kRaceRetries; ++round) {
    auto f = findMeta(id);
    if (!f) return Error{f.error()};
    if (!f.value()) return false;
    const Meta& cur = *f.value();
    const int64_t now = wallMs();
    if (!cur.owner.empty() && cur.until_ms >= now) return true;  // an attempt runs now
    // Take it for a moment (the same race as a claim), make it due, let go.
    Meta mine{metaName(id, me, now + 60000), id, me, now + 60000};
    if (renameNoReplace(path(cur.name), path(mine.name)) != 0) {
      if (errno == ENOENT || errno == EEXIST) continue;
      return Error{sysError("rename " + path(cur.name), errno)};
    }
    auto e = readMeta(mine);
    if (!e) {
      (void)renameNoReplace(path(mine.name), path(cur.name));
      return Error{e.error()};
    }
    e->next_ms = 0;
    auto ok = update(e.value(), me, true);
    if (!ok) {
      (void)renameNoReplace(path(mine.name), path(metaName(id, "", 0)));
      return Error{ok.error()};
    }
    return true;
  }
  return Error{"retry " + id + ": the entry kept changing"};
}

Result<QueueSummary> DirQueueStore::summary() {
  auto s = scan();
  if (!s) return Error{s.error()};
  QueueSummary sum;
  for (const auto& m : s->metas) {
    auto c = readCached(m);
    if (!c) continue;
    sum.entries++;
    sum.bytes += c->msg_size;
    if (sum.oldest_created_ms == 0 || c->created_ms < sum.oldest_created_ms)
      sum.oldest_created_ms = c->created_ms;
  }
  return sum;
}

Result<std::vector<QueueEntry>> DirQueueStore::findByMessage(const std::string& message_id,
                                                             const std::string& mail_from) {
  std::vector<QueueEntry> out;
  if (message_id.empty()) return out;
  auto s = scan();
  if (!s) return Error{s.error()};
  // Every message the sessions take is looked up here while the queue holds
  // entries: read the metadata only of the entries whose (Message-ID, sender),
  // which never change, match or are not known yet, not of every entry each time.
  std::unordered_set<std::string> present;
  for (const auto& m : s->metas) {
    present.insert(m.id);
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = message_keys_.find(m.id);
      if (it != message_keys_.end() && (it->second.first != message_id || it->second.second != mail_from))
        continue;
    }
    auto e = readMeta(m);
    if (!e) continue;
    {
      std::lock_guard<std::mutex> g(mu_);
      message_keys_[m.id] = {e->message_id, e->mail_from};
    }
    if (e->message_id == message_id && e->mail_from == mail_from) out.push_back(std::move(e.value()));
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = message_keys_.begin(); it != message_keys_.end();)
      it = present.count(it->first) ? std::next(it) : message_keys_.erase(it);
  }
  std::sort(out.begin(), out.end(), sortOldest);
  return out;
}

Result<size_t> DirQueueStore::cleanup(int64_t cutoff_ms) {
  auto s = scan();
  if (!s) return Error{s.error()};
  auto old = [&](const std::string& name) {
    struct stat st {};
    return ::lstat(path(name).c_str(), &st) == 0 && statNs(st.st_mtim) / 1000000 < cutoff_ms;
  };
  std::unordered_set<std::string> with_meta;
  for (const auto& m : s->metas) with_meta.insert(m.id);
  size_t n = 0;
  for (const auto& j : s->junk)
    if (old(j) && ::unlink(path(j).c_str()) == 0) n++;
  for (const auto& id : s->msgs) {
    if (with_meta.count(id) || !old(id + ".msg")) continue;
    // Look once more: a put renames the message first and its meta right after.
    auto f = findMeta(id);
    if (f && !f.value() && ::unlink(path(id + ".msg").c_str()) == 0) n++;
  }
  if (n) fsyncDir();
  return n;
}

}  // namespace mailgate::queue
