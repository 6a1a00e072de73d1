// Drives the PostgreSQL queue store (auth/postgres_queue.h) on a real database, for
// tests/integration/test_queue_pg_store.py (several of these processes share one
// database to act as the gateways of a cluster).
//   pg_queue_store CONNINFO MAX_ENTRIES MAX_SIZE
// One command per stdin line, one answer line per command ("-" is the empty string;
// times are unix ms, "now" the wall clock):
//   put ID SIZE MSGID FROM              -> stored | full | error <why>
//   fill PREFIX N SIZE                  -> filled stored=<n> full=<n> error=<n>
//   claim OWNER LEASE_MS LIMIT [NOW]    -> claimed <id>...            | error <why>
//   drain OWNER LEASE_MS BATCH          -> drained <n> lost=<n> <id>... (claims until nothing is due,
//                                          writing each entry back under its lease)
//   update ID OWNER STATE RELEASE DELAY -> true | false | error <why>  (the last recipient's state,
//                                          attempts + 1, due DELAY ms from now; RELEASE 0|1)
//   renew ID OWNER UNTIL [NOW]          -> true | false | error <why>  (UNTIL: ms from NOW)
//   remove ID OWNER                     -> true | false | error <why>
//   retry ID                            -> true | false | error <why>
//   get ID                              -> entry <key=value>... | none | error <why>
//   list LIMIT                          -> list <id>...
//   find MSGID FROM                     -> found <id>...
//   summary                             -> summary entries=<n> bytes=<n> oldest=<ms>
//   body ID                             -> body <size> <fnv1a-64 hex> | error <why>
// A message of SIZE octets holds byte i = i % 256 (every octet value, NUL included).
#include <chrono>
#include <cstdint>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "auth/postgres_queue.h"
#include "conf/config.h"
#include "filters/message_body.h"
#include "gateway/queue/queue_store.h"

namespace {

using mailgate::queue::QueueEntry;
using mailgate::queue::QueueStore;

class PatternBody final : public mailgate::filters::MessageBody {
 public:
  explicit PatternBody(uint64_t size) : size_(size) {}
  uint64_t size() const override { return size_; }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    out->clear();
    for (uint64_t i = off; i < size_ && out->size() < n; ++i) out->push_back(static_cast<char>(i % 256));
    return true;
  }

 private:
  uint64_t size_;
};

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string arg(const std::string& s) { return s == "-" ? std::string() : s; }
std::string show(const std::string& s) { return s.empty() ? "-" : s; }

std::string ids(const std::vector<QueueEntry>& v) {
  std::string out;
  for (const auto& e : v) out += " " + e.id;
  return out;
}

std::string describe(const QueueEntry& e) {
  std::ostringstream o;
  o << "entry id=" << e.id << " created=" << e.created_ms << " next=" << e.next_ms << " attempts=" << e.attempts
    << " size=" << e.size << " msgid=" << show(e.message_id) << " from=" << show(e.mail_from)
    << " owner=" << show(e.lease_owner) << " until=" << e.lease_until_ms << " client_ip=" << show(e.client_ip)
    << " helo=" << show(e.helo) << " rcpts=";
  for (size_t i = 0; i < e.rcpts.size(); ++i)
    o << (i ? "," : "") << e.rcpts[i].addr << ":" << mailgate::queue::rcptStateName(e.rcpts[i].state);
  return o.str();
}

QueueEntry newEntry(const std::string& id, const std::string& msgid, const std::string& from) {
  QueueEntry e;
  e.id = id;
  e.created_ms = nowMs();
  e.mail_from = from;
  e.message_id = msgid;
  e.client_ip = "192.0.2.7";
  e.helo = "client.example";
  e.listener = "mx";
  e.session_id = id.substr(0, id.find('-'));
  e.rcpts.push_back({"<dave@example.org>", mailgate::queue::RcptState::kDelivered, "250 2.0.0 ok", e.created_ms});
  e.rcpts.push_back({"<frank@example.org>", mailgate::queue::RcptState::kPending, "451 4.2.0 try later",
                     e.created_ms});
  return e;
}

const char* putName(QueueStore::Put p) {
  switch (p) {
    case QueueStore::Put::kStored:
      return "stored";
    case QueueStore::Put::kFull:
      return "full";
    case QueueStore::Put::kError:
      return "error";
  }
  return "error";
}

std::string answer(QueueStore& store, const std::string& line) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  if (cmd == "put") {
    std::string id, msgid, from;
    uint64_t size = 0;
    in >> id >> size >> msgid >> from;
    std::string err;
    const auto r = store.put(newEntry(id, arg(msgid), arg(from)), PatternBody(size), &err);
    return r == QueueStore::Put::kError ? "error " + err : putName(r);
  }
  if (cmd == "fill") {
    std::string prefix;
    int n = 0;
    uint64_t size = 0;
    in >> prefix >> n >> size;
    int stored = 0, full = 0, error = 0;
    for (int i = 0; i < n; ++i) {
      std::string err;
      const auto r = store.put(newEntry(prefix + "-" + std::to_string(i), "", "<s@example.com>"),
                               PatternBody(size), &err);
      (r == QueueStore::Put::kStored ? stored : r == QueueStore::Put::kFull ? full : error)++;
    }
    return "filled stored=" + std::to_string(stored) + " full=" + std::to_string(full) +
           " error=" + std::to_string(error);
  }
  if (cmd == "claim") {
    std::string owner;
    int64_t lease = 0, now = 0;
    size_t limit = 0;
    in >> owner >> lease >> limit;
    if (!(in >> now)) now = nowMs();
    auto r = store.claimDue(owner, now, lease, limit);
    if (!r) return "error " + r.error();
    return "claimed" + ids(*r);
  }
  if (cmd == "drain") {
    std::string owner;
    int64_t lease = 0;
    size_t batch = 0;
    in >> owner >> lease >> batch;
    std::vector<QueueEntry> all;
    int lost = 0;
    for (;;) {
      auto r = store.claimDue(owner, nowMs(), lease, batch);
      if (!r) return "error " + r.error();
      if (r->empty()) break;
      for (auto& e : *r) {
        if (e.lease_owner != owner) ++lost;
        ++e.attempts;
        auto u = store.update(e, owner, false);
        if (!u) return "error " + u.error();
        if (!*u) ++lost;
        all.push_back(std::move(e));
      }
    }
    return "drained " + std::to_string(all.size()) + " lost=" + std::to_string(lost) + ids(all);
  }
  if (cmd == "update") {
    std::string id, owner, state;
    int release = 0;
    int64_t delay = 0;
    in >> id >> owner >> state >> release >> delay;
    auto g = store.get(id);
    if (!g) return "error " + g.error();
    if (!*g) return "false";
    QueueEntry e = **g;
    if (!e.rcpts.empty() && !mailgate::queue::parseRcptState(state, &e.rcpts.back().state))
      return "error bad state";
    ++e.attempts;
    e.next_ms = nowMs() + delay;
    auto r = store.update(e, arg(owner), release != 0);
    if (!r) return "error " + r.error();
    return *r ? "true" : "false";
  }
  if (cmd == "renew") {
    std::string id, owner;
    int64_t until = 0, now = 0;
    in >> id >> owner >> until;
    if (!(in >> now)) now = nowMs();
    auto r = store.renew(id, arg(owner), now, now + until);
    if (!r) return "error " + r.error();
    return *r ? "true" : "false";
  }
  if (cmd == "remove" || cmd == "retry") {
    std::string id, owner;
    in >> id >> owner;
    auto r = cmd == "remove" ? store.remove(id, arg(owner)) : store.retryNow(id);
    if (!r) return "error " + r.error();
    return *r ? "true" : "false";
  }
  if (cmd == "get") {
    std::string id;
    in >> id;
    auto r = store.get(id);
    if (!r) return "error " + r.error();
    return *r ? describe(**r) : "none";
  }
  if (cmd == "list") {
    size_t limit = 0;
    in >> limit;
    auto r = store.list(limit);
    if (!r) return "error " + r.error();
    return "list" + ids(*r);
  }
  if (cmd == "find") {
    std::string msgid, from;
    in >> msgid >> from;
    auto r = store.findByMessage(arg(msgid), arg(from));
    if (!r) return "error " + r.error();
    return "found" + ids(*r);
  }
  if (cmd == "summary") {
    auto r = store.summary();
    if (!r) return "error " + r.error();
    return "summary entries=" + std::to_string(r->entries) + " bytes=" + std::to_string(r->bytes) +
           " oldest=" + std::to_string(r->oldest_created_ms);
  }
  if (cmd == "body") {
    std::string id;
    in >> id;
    auto r = store.body(id);
    if (!r) return "error " + r.error();
    const auto& b = **r;
    uint64_t h = 0xcbf29ce484222325ull;
    std::string chunk;
    for (uint64_t off = 0; off < b.size(); off += chunk.size()) {
      if (!b.read(off, 65536, &chunk) || chunk.empty()) return "error read";
      for (const char c : chunk) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
      }
    }
    std::ostringstream o;
    o << "body " << b.size() << " " << std::hex << h;
    return o.str();
  }
  return "error unknown command";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: pg_queue_store CONNINFO MAX_ENTRIES MAX_SIZE\n";
    return 2;
  }
  mailgate::conf::DirectoryConfig dir;
  dir.driver = "postgres";
  dir.postgres.conninfo = argv[1];
  dir.postgres.timeout = std::chrono::milliseconds(5000);
  mailgate::conf::QueueConfig q;
  q.store = "postgres";
  q.max_entries = std::stoull(argv[2]);
  q.max_size = std::stoull(argv[3]);
  auto store = mailgate::auth::makePostgresQueueStore(dir, q);
  if (!store) {
    std::cerr << "create: " << store.error() << "\n";
    return 2;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::cout << answer(**store, line) << std::endl;
  }
  return 0;
}
