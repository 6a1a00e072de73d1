#include "filters/quarantine.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "gateway/core/ascii.h"
#include "gateway/core/durable_file.h"
#include "gateway/core/record_text.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::filters {

namespace {
constexpr std::string_view kMagic = "mailgate-quarantine: 1";
constexpr size_t kMaxHeader = 1 << 20;
constexpr size_t kChunk = 64 * 1024;

std::string sysError(const std::string& what, int e) { return what + ": " + std::strerror(e); }

bool parseMs(std::string_view s, int64_t* out) {
  uint64_t v = 0;
  if (!core::parseDecimal(s, static_cast<uint64_t>(INT64_MAX), false, &v)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

QuarantineStats& quarantineStats() {
  static QuarantineStats s;
  return s;
}

int64_t wallMs() { return core::wallMs(); }

std::string newQuarantineId(int64_t now_ms) {
  static constexpr char kHex[] = "0123456789abcdef";
  unsigned char rnd[8] = {};
  if (getrandom(rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd)) {
    static std::atomic<uint64_t> seq{0};
    const uint64_t v = seq.fetch_add(1) ^ static_cast<uint64_t>(::getpid()) << 32;
    std::memcpy(rnd, &v, sizeof rnd);
  }
  std::string id;
  const uint64_t t = static_cast<uint64_t>(now_ms) & 0xffffffffffffull;  // 48 bits
  for (int shift = 44; shift >= 0; shift -= 4) id.push_back(kHex[(t >> shift) & 0xF]);
  for (unsigned char c : rnd) {
    id.push_back(kHex[c >> 4]);
    id.push_back(kHex[c & 0xF]);
  }
  id.resize(24);
  return id;
}

bool validQuarantineId(std::string_view id) {
  if (id.size() != 24) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string encodeQuarantineMeta(const QuarantineEntry& e) {
  std::string out(kMagic);
  out += '\n';
  auto line = [&](std::string_view k, std::string_view v) {
    out += k;
    out += ": ";
    core::percentEscapeTo(v, core::keepPrintableOrSpace, &out);
    out += '\n';
  };
  line("id", e.id);
  line("created_ms", std::to_string(e.created_ms));
  line("reason", e.reason);
  line("filter", e.filter);
  line("ref", e.ref);
  line("mail_from", e.mail_from);
  for (const auto& r : e.rcpts) line("rcpt", r);
  line("client_ip", e.client_ip);
  line("helo", e.helo);
  line("user", e.user);
  line("listener", e.listener);
  line("session_id", e.session_id);
  line("smtputf8", e.smtputf8 ? "1" : "0");
  line("body_8bit", e.body_8bit ? "1" : "0");
  line("size", std::to_string(e.size));
  for (const auto& r : e.delivered) line("delivered", r);
  out += '\n';
  return out;
}

bool decodeQuarantineMeta(std::string_view text, QuarantineEntry* out) {
  *out = QuarantineEntry{};
  size_t nl = text.find('\n');
  if (nl == std::string_view::npos || text.substr(0, nl) != kMagic) return false;
  text.remove_prefix(nl + 1);
  bool have_id = false, have_created = false, have_size = false;
  while (!text.empty()) {
    nl = text.find('\n');
    if (nl == std::string_view::npos) return false;
    const std::string_view l = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (l.empty()) return have_id && have_created && have_size && validQuarantineId(out->id);
    const size_t colon = l.find(": ");
    if (colon == std::string_view::npos) return false;
    const std::string_view k = l.substr(0, colon);
    std::string v;
    if (!core::percentUnescape(l.substr(colon + 2), nullptr, &v)) return false;
    int64_t n = 0;
    if (k == "id") {
      out->id = std::move(v);
      have_id = true;
    } else if (k == "created_ms") {
      if (!parseMs(v, &out->created_ms)) return false;
      have_created = true;
    } else if (k == "size") {
      if (!parseMs(v, &n)) return false;
      out->size = static_cast<uint64_t>(n);
      have_size = true;
    } else if (k == "reason") {
      out->reason = std::move(v);
    } else if (k == "filter") {
      out->filter = std::move(v);
    } else if (k == "ref") {
      out->ref = std::move(v);
    } else if (k == "mail_from") {
      out->mail_from = std::move(v);
    } else if (k == "rcpt") {
      out->rcpts.push_back(std::move(v));
    } else if (k == "client_ip") {
      out->client_ip = std::move(v);
    } else if (k == "helo") {
      out->helo = std::move(v);
    } else if (k == "user") {
      out->user = std::move(v);
    } else if (k == "listener") {
      out->listener = std::move(v);
    } else if (k == "session_id") {
      out->session_id = std::move(v);
    } else if (k == "smtputf8") {
      out->smtputf8 = v == "1";
    } else if (k == "body_8bit") {
      out->body_8bit = v == "1";
    } else if (k == "delivered") {
      out->delivered.push_back(std::move(v));
    }  // unknown keys: a newer writer; ignored
  }
  return false;  // no empty line: truncated
}

bool quarantineMatches(const QuarantineEntry& e, const QuarantineFilter& f) {
  if (f.before_ms && e.created_ms >= f.before_ms) return false;
  if (!f.from.empty() && ascii::lower(e.mail_from).find(ascii::lower(f.from)) == std::string::npos)
    return false;
  if (!f.rcpt.empty()) {
    const std::string want = ascii::lower(f.rcpt);
    if (std::none_of(e.rcpts.begin(), e.rcpts.end(),
                     [&](const std::string& r) { return ascii::lower(r).find(want) != std::string::npos; }))
      return false;
  }
  return true;
}

// --- DirQuarantineStore -----------------------------------------------------------

Result<std::shared_ptr<DirQuarantineStore>> DirQuarantineStore::open(const std::string& dir) {
  if (dir.empty() || dir[0] != '/') return Error{"hooks.quarantine.dir: an absolute path is needed"};
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return Error{sysError("hooks.quarantine.dir " + dir, errno)};
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
      return Error{sysError("hooks.quarantine.dir " + dir + ": cannot create it", errno)};
  } else if (!S_ISDIR(st.st_mode)) {
    return Error{"hooks.quarantine.dir " + dir + ": not a directory"};
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return Error{sysError("hooks.quarantine.dir " + dir + ": cannot write in it", errno)};
  auto store = std::shared_ptr<DirQuarantineStore>(new DirQuarantineStore(dir));
  if (auto n = store->count()) quarantineStats().entries.store(static_cast<int64_t>(n.value()));
  return store;
}

Result<bool> DirQuarantineStore::writeDurably(const std::string& id, const std::string& header,
                                              const MessageBody& body, uint64_t body_off) {
  const std::string tmp = dir_ + "/.tmp-" + id;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) return Error{sysError("create " + tmp, errno)};
  auto fail = [&](const std::string& what) -> Result<bool> {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return Error{sysError(what + " " + tmp, e ? e : EIO)};
  };
  if (!core::writeAll(fd, header)) return fail("write");
  std::string chunk;
  for (uint64_t off = body_off; off < body.size();) {
    errno = 0;
    if (!body.read(off, kChunk, &chunk) || chunk.empty()) return fail("read the message for");
    if (!core::writeAll(fd, chunk)) return fail("write");
    off += chunk.size();
  }
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return Error{sysError("close " + tmp, e)};
  }
  if (::rename(tmp.c_str(), path(id).c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return Error{sysError("rename " + tmp, e)};
  }
  if (!core::fsyncDirectory(dir_)) return Error{sysError("fsync " + dir_, errno)};
  return true;
}

Result<std::string> DirQuarantineStore::put(QuarantineEntry meta, const MessageBody& body) {
  if (meta.created_ms == 0) meta.created_ms = wallMs();
  meta.id = newQuarantineId(meta.created_ms);
  meta.size = body.size();
  auto ok = writeDurably(meta.id, encodeQuarantineMeta(meta), body, 0);
  if (!ok) return Error{ok.error()};
  quarantineStats().entries.fetch_add(1);
  return meta.id;
}

Result<QuarantineEntry> DirQuarantineStore::readMeta(const std::string& id, uint64_t* body_off) {
  if (!validQuarantineId(id)) return Error{"not found"};
  const int fd = ::open(path(id).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error{errno == ENOENT ? std::string("not found") : sysError("open " + path(id), errno)};
  std::string head;
  char buf[8192];
  size_t end = std::string::npos;
  while (end == std::string::npos && head.size() < kMaxHeader) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    head.append(buf, static_cast<size_t>(n));
    end = head.find("\n\n");
  }
  ::close(fd);
  QuarantineEntry e;
  if (end == std::string::npos || !decodeQuarantineMeta(std::string_view(head).substr(0, end + 2), &e) ||
      e.id != id)
    return Error{"malformed entry " + path(id)};
  if (body_off) *body_off = end + 2;
  return e;
}

Result<std::vector<QuarantineEntry>> DirQuarantineStore::list(const QuarantineFilter& filter, size_t limit) {
  DIR* d = ::opendir(dir_.c_str());
  if (!d) return Error{sysError("opendir " + dir_, errno)};
  std::vector<std::string> ids;
  while (dirent* de = ::readdir(d)) {
    const std::string_view name = de->d_name;
    if (name.size() != 28 || name.substr(24) != ".msg") continue;  // temp files start with '.'
    if (validQuarantineId(name.substr(0, 24))) ids.emplace_back(name.substr(0, 24));
  }
  ::closedir(d);
  std::sort(ids.begin(), ids.end(), std::greater<>());  // ids start with the time: newest first
  std::vector<QuarantineEntry> out;
  for (const auto& id : ids) {
    if (out.size() >= limit) break;
    auto e = readMeta(id, nullptr);
    if (!e) continue;  // removed meanwhile, or malformed: not listed
    if (quarantineMatches(e.value(), filter)) out.push_back(std::move(e.value()));
  }
  return out;
}

Result<QuarantineEntry> DirQuarantineStore::get(const std::string& id,
                                                std::shared_ptr<const MessageBody>* body) {
  uint64_t off = 0;
  auto e = readMeta(id, &off);
  if (!e || !body) return e;
  const int fd = ::open(path(id).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error{errno == ENOENT ? std::string("not found") : sysError("open " + path(id), errno)};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < off) {
    ::close(fd);
    return Error{"malformed entry " + path(id)};
  }
  *body = std::make_shared<FileBody>(fd, static_cast<uint64_t>(st.st_size) - off, off);
  return e;
}

Result<bool> DirQuarantineStore::remove(const std::string& id) {
  if (!validQuarantineId(id)) return false;
  if (::unlink(path(id).c_str()) != 0) {
    if (errno == ENOENT) return false;
    return Error{sysError("unlink " + path(id), errno)};
  }
  core::fsyncDirectory(dir_);
  quarantineStats().entries.fetch_sub(1);
  return true;
}

Result<size_t> DirQuarantineStore::expire(int64_t cutoff_ms) {
  DIR* d = ::opendir(dir_.c_str());
  if (!d) return Error{sysError("opendir " + dir_, errno)};
  std::vector<std::string> old_ids, stale_tmp;
  while (dirent* de = ::readdir(d)) {
    const std::string name = de->d_name;
    if (name.rfind(".tmp-", 0) == 0) {
      struct stat st {};
      // A temp file left by a crash: removed once as old as the cutoff.
      if (::stat((dir_ + "/" + name).c_str(), &st) == 0 && int64_t{st.st_mtime} * 1000 < cutoff_ms)
        stale_tmp.push_back(name);
      continue;
    }
    if (name.size() != 28 || name.substr(24) != ".msg" || !validQuarantineId(name.substr(0, 24))) continue;
    old_ids.push_back(name.substr(0, 24));
  }
  ::closedir(d);
  for (const auto& t : stale_tmp) ::unlink((dir_ + "/" + t).c_str());
  size_t n = 0;
  for (const auto& id : old_ids) {
    auto e = readMeta(id, nullptr);
    if (!e || e.value().created_ms >= cutoff_ms) continue;
    {
      std::lock_guard<std::mutex> g(claims_mu_);
      if (claims_.count(id)) continue;  // a release runs
    }
    if (auto r = remove(id); r && r.value()) n++;
  }
  if (n) quarantineStats().expired.fetch_add(n);
  if (auto c = count()) quarantineStats().entries.store(static_cast<int64_t>(c.value()));
  return n;
}

Result<size_t> DirQuarantineStore::count() {
  DIR* d = ::opendir(dir_.c_str());
  if (!d) return Error{sysError("opendir " + dir_, errno)};
  size_t n = 0;
  while (dirent* de = ::readdir(d)) {
    const std::string_view name = de->d_name;
    if (name.size() == 28 && name.substr(24) == ".msg" && validQuarantineId(name.substr(0, 24))) n++;
  }
  ::closedir(d);
  return n;
}

QuarantineStore::Claim DirQuarantineStore::claim(const std::string& id) {
  std::lock_guard<std::mutex> g(claims_mu_);
  if (claims_.count(id)) return Claim::kBusy;
  struct stat st {};
  if (!validQuarantineId(id) || ::stat(path(id).c_str(), &st) != 0) return Claim::kNotFound;
  claims_.insert(id);
  return Claim::kClaimed;
}

void DirQuarantineStore::unclaim(const std::string& id) {
  std::lock_guard<std::mutex> g(claims_mu_);
  claims_.erase(id);
}

Result<bool> DirQuarantineStore::setDelivered(const std::string& id,
                                              const std::vector<std::string>& delivered) {
  std::shared_ptr<const MessageBody> body;
  auto e = get(id, &body);
  if (!e) return Error{e.error()};
  QuarantineEntry meta = std::move(e.value());
  meta.delivered = delivered;
  // The same id, rewritten whole: the rename replaces the old file atomically.
  auto ok = writeDurably(id, encodeQuarantineMeta(meta), *body, 0);
  if (!ok) return Error{ok.error()};
  return true;
}

}  // namespace mailgate::filters
