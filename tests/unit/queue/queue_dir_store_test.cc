#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "gateway/queue/dir_queue_store.h"

using mailgate::filters::StringBody;

namespace mailgate::queue {
namespace {

std::string readAll(const filters::MessageBody& b) {
  std::string out, chunk;
  for (uint64_t off = 0; off < b.size(); off += chunk.size()) {
    EXPECT_TRUE(b.read(off, 7, &chunk));
    if (chunk.empty()) break;
    out += chunk;
  }
  return out;
}

std::vector<std::string> files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* de = d ? ::readdir(d) : nullptr) {
    const std::string n = de->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  if (d) ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void touchOld(const std::string& p) {
  const timespec ts[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, 0), 0) << p;
}

constexpr int64_t kNow = 1700000000000;

class DirQueueStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailgate-dirqueue-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/spool";
    auto s = DirQueueStore::open(dir_, 1000, 1 << 20);
    ASSERT_TRUE(s) << s.error();
    store_ = s.value();
  }
  void TearDown() override { std::system(("rm -rf '" + root_ + "'").c_str()); }

  QueueEntry entry(const std::string& id, int64_t created = kNow, int64_t next = 0) {
    QueueEntry e;
    e.id = id;
    e.created_ms = created;
    e.next_ms = next;
    e.mail_from = "<alice@example.org>";
    e.rcpts.push_back({"<dave@example.com>", RcptState::kDelivered, "250 ok", created});
    e.rcpts.push_back({"<frank@example.com>", RcptState::kPending, "451 4.2.0 busy", created});
    e.message_id = "<m-" + id + "@example.org>";
    e.session_id = "s1";
    e.listener = "smtp";
    return e;
  }
  void put(const QueueEntry& e, const std::string& body = "Subject: x\r\n\r\nhello\r\n") {
    std::string err;
    ASSERT_EQ(store_->put(e, StringBody(body), &err), QueueStore::Put::kStored) << err;
  }

  std::string root_, dir_;
  std::shared_ptr<DirQueueStore> store_;
};

TEST_F(DirQueueStoreTest, OpenCreatesTheDirectory) {
  struct stat st {};
  ASSERT_EQ(::stat(dir_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0750u);
  EXPECT_EQ(store_->kind(), "dir");
  EXPECT_FALSE(DirQueueStore::open("relative/dir", 1, 1));
  EXPECT_FALSE(DirQueueStore::open(root_ + "/no/such/parent", 1, 1));
  std::ofstream(root_ + "/file") << "x";
  EXPECT_FALSE(DirQueueStore::open(root_ + "/file", 1, 1));
  EXPECT_TRUE(files(dir_).empty());  // the exchange probe left nothing
}

TEST_F(DirQueueStoreTest, PutGetBodyList) {
  put(entry("b", kNow + 1), "second");
  put(entry("a", kNow), "first message\r\n");
  EXPECT_EQ(files(dir_), (std::vector<std::string>{"a.msg", "a~~0", "b.msg", "b~~0"}));
  auto g = store_->get("a");
  ASSERT_TRUE(g && g.value());
  EXPECT_EQ(g.value()->mail_from, "<alice@example.org>");
  EXPECT_EQ(g.value()->size, 15u);
  EXPECT_EQ(g.value()->rcpts.size(), 2u);
  EXPECT_TRUE(g.value()->lease_owner.empty());
  auto b = store_->body("a");
  ASSERT_TRUE(b) << b.error();
  EXPECT_EQ(readAll(*b.value()), "first message\r\n");
  auto l = store_->list(10);
  ASSERT_TRUE(l);
  ASSERT_EQ(l->size(), 2u);
  EXPECT_EQ((*l)[0].id, "a");  // the oldest first
  EXPECT_EQ((*l)[1].id, "b");
  l = store_->list(1);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->size(), 1u);
  auto none = store_->get("zz");
  ASSERT_TRUE(none);
  EXPECT_FALSE(none.value());
  EXPECT_FALSE(store_->get("../etc").value());
  EXPECT_FALSE(store_->body("zz"));
}

TEST_F(DirQueueStoreTest, PutRefusesBadAndDuplicateIds) {
  std::string err;
  EXPECT_EQ(store_->put(entry(".x"), StringBody("m"), &err), QueueStore::Put::kError);
  EXPECT_EQ(store_->put(entry("a/b"), StringBody("m"), &err), QueueStore::Put::kError);
  QueueEntry norcpt = entry("n");
  norcpt.rcpts.clear();
  EXPECT_EQ(store_->put(norcpt, StringBody("m"), &err), QueueStore::Put::kError);
  put(entry("a"), "one");
  err.clear();
  EXPECT_EQ(store_->put(entry("a"), StringBody("two"), &err), QueueStore::Put::kError);
  EXPECT_NE(err.find("exists"), std::string::npos) << err;
  EXPECT_EQ(readAll(*store_->body("a").value()), "one");  // stored once, never rewritten
}

TEST_F(DirQueueStoreTest, Full) {
  auto s = DirQueueStore::open(root_ + "/small", 2, 100);
  ASSERT_TRUE(s);
  std::string err;
  EXPECT_EQ(s.value()->put(entry("a"), StringBody(std::string(40, 'x')), &err), QueueStore::Put::kStored);
  EXPECT_EQ(s.value()->put(entry("b"), StringBody(std::string(61, 'x')), &err), QueueStore::Put::kFull);
  EXPECT_EQ(s.value()->put(entry("b"), StringBody(std::string(60, 'x')), &err), QueueStore::Put::kStored);
  EXPECT_EQ(s.value()->put(entry("c"), StringBody("x"), &err), QueueStore::Put::kFull);  // entries
  EXPECT_EQ(files(root_ + "/small").size(), 4u);                                         // nothing of c
  ASSERT_TRUE(s.value()->remove("a", ""));
  EXPECT_EQ(s.value()->put(entry("c"), StringBody("x"), &err), QueueStore::Put::kStored);
}

TEST_F(DirQueueStoreTest, ClaimLeasesDueEntriesOnce) {
  put(entry("later", kNow - 10, kNow + 5000));
  put(entry("new", kNow - 1));
  put(entry("old", kNow - 2));
  auto c = store_->claimDue("gw1", kNow, 60000, 10);
  ASSERT_TRUE(c) << c.error();
  ASSERT_EQ(c->size(), 2u);
  EXPECT_EQ((*c)[0].id, "old");  // the oldest due first
  EXPECT_EQ((*c)[1].id, "new");
  EXPECT_EQ((*c)[0].lease_owner, "gw1");
  EXPECT_EQ((*c)[0].lease_until_ms, kNow + 60000);
  EXPECT_EQ(store_->get("old").value()->lease_owner, "gw1");
  // Leased: nobody gets them again while the lease lives, not even the owner.
  c = store_->claimDue("gw2", kNow + 1000, 60000, 10);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->empty());
  c = store_->claimDue("gw1", kNow + 1000, 60000, 10);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->empty());
  // The limit.
  c = store_->claimDue("gw2", kNow + 6000, 1000, 0);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->empty());
  c = store_->claimDue("gw2", kNow + 6000, 1000, 1);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->size(), 1u);
  EXPECT_EQ((*c)[0].id, "later");
}

TEST_F(DirQueueStoreTest, ExpiredLeaseIsTakenOverAndTheOldOwnerLosesIt) {
  put(entry("e"));
  auto a = store_->claimDue("gw:a", kNow, 1000, 10);
  ASSERT_TRUE(a && a->size() == 1);
  QueueEntry mine = (*a)[0];
  // gw:a dies; its lease runs out; gw:b takes the entry over.
  auto b = store_->claimDue("gw:b", kNow + 1001, 1000, 10);
  ASSERT_TRUE(b && b->size() == 1);
  EXPECT_EQ((*b)[0].lease_owner, "gw:b");
  // gw:a comes back: its update and remove fail, nothing changes.
  mine.rcpts[1].state = RcptState::kDelivered;
  auto u = store_->update(mine, "gw:a", false);
  ASSERT_TRUE(u) << u.error();
  EXPECT_FALSE(u.value());
  auto r = store_->remove("e", "gw:a");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r.value());
  auto g = store_->get("e").value();
  ASSERT_TRUE(g);
  EXPECT_EQ(g->rcpts[1].state, RcptState::kPending);
  EXPECT_EQ(g->lease_owner, "gw:b");
  // Exactly one meta file.
  EXPECT_EQ(files(dir_).size(), 2u);
}

TEST_F(DirQueueStoreTest, RenewExtendsTheLeaseUntilItIsLost) {
  put(entry("n"));
  auto a = store_->claimDue("gw:a", kNow, 1000, 10);
  ASSERT_TRUE(a && a->size() == 1);
  QueueEntry mine = (*a)[0];
  // Renewed: the entry is not due for anyone after the first lease would have run out.
  auto r = store_->renew("n", "gw:a", kNow + 500, kNow + 5500);
  ASSERT_TRUE(r) << r.error();
  EXPECT_TRUE(r.value());
  EXPECT_EQ(store_->get("n").value()->lease_until_ms, kNow + 5500);
  EXPECT_TRUE(store_->claimDue("gw:b", kNow + 2000, 1000, 10)->empty());
  // The same expiry again changes nothing and holds; nobody else renews it.
  EXPECT_TRUE(store_->renew("n", "gw:a", kNow + 600, kNow + 5500).value());
  EXPECT_FALSE(store_->renew("n", "gw:b", kNow + 600, kNow + 9000).value());
  EXPECT_FALSE(store_->renew("missing", "gw:a", kNow + 600, kNow + 9000).value());
  EXPECT_FALSE(store_->renew("n", "", kNow + 600, kNow + 9000).value());
  // The update finds the renewed lease from the claim's copy, and keeps it.
  mine.rcpts[1].state = RcptState::kDelivered;
  ASSERT_TRUE(store_->update(mine, "gw:a", false).value());
  auto g = store_->get("n").value();
  EXPECT_EQ(g->lease_owner, "gw:a");
  EXPECT_EQ(g->lease_until_ms, kNow + 5500);
  EXPECT_EQ(g->rcpts[1].state, RcptState::kDelivered);
  // Run out and taken over: the old owner's renewal fails and changes nothing.
  auto b = store_->claimDue("gw:b", kNow + 5501, 1000, 10);
  ASSERT_TRUE(b && b->size() == 1);
  r = store_->renew("n", "gw:a", kNow + 5600, kNow + 60000);
  ASSERT_TRUE(r) << r.error();
  EXPECT_FALSE(r.value());
  g = store_->get("n").value();
  EXPECT_EQ(g->lease_owner, "gw:b");
  EXPECT_EQ(g->lease_until_ms, kNow + 6501);
  EXPECT_TRUE(store_->renew("n", "gw:b", kNow + 6000, kNow + 60000).value());
  EXPECT_EQ(files(dir_).size(), 2u);  // one meta, one message, no leftovers
}

TEST_F(DirQueueStoreTest, UpdateKeepsTheLeaseOrReleasesIt) {
  put(entry("u"));
  auto c = store_->claimDue("gw1", kNow, 60000, 1);
  ASSERT_TRUE(c && c->size() == 1);
  QueueEntry e = (*c)[0];
  e.rcpts[1].state = RcptState::kDelivered;
  e.rcpts[1].reply = "250 2.0.0 ok";
  e.attempts = 1;
  e.next_ms = kNow + 120000;
  e.mail_from = "<changed@example.org>";  // not the update's business
  auto u = store_->update(e, "gw1", false);
  ASSERT_TRUE(u && u.value());
  auto g = store_->get("u").value();
  EXPECT_EQ(g->rcpts[1].state, RcptState::kDelivered);
  EXPECT_EQ(g->rcpts[1].reply, "250 2.0.0 ok");
  EXPECT_EQ(g->attempts, 1u);
  EXPECT_EQ(g->next_ms, kNow + 120000);
  EXPECT_EQ(g->mail_from, "<alice@example.org>");
  EXPECT_EQ(g->lease_owner, "gw1");
  // Somebody else's name cannot update it.
  EXPECT_FALSE(store_->update(e, "gw2", false).value());
  // The caller's lease_until_ms is not needed to find its own lease.
  e.lease_until_ms = 0;
  e.attempts = 2;
  u = store_->update(e, "gw1", true);
  ASSERT_TRUE(u && u.value());
  g = store_->get("u").value();
  EXPECT_EQ(g->attempts, 2u);
  EXPECT_TRUE(g->lease_owner.empty());
  EXPECT_EQ(g->lease_until_ms, 0);
  // Released, not due before next_ms.
  EXPECT_TRUE(store_->claimDue("gw2", kNow + 1, 1000, 10)->empty());
  EXPECT_EQ(store_->claimDue("gw2", kNow + 120000, 1000, 10)->size(), 1u);
  // After release the old owner cannot write.
  EXPECT_FALSE(store_->update(e, "gw1", false).value());
  const auto names = files(dir_);
  EXPECT_EQ(std::count_if(names.begin(), names.end(), [](const std::string& n) { return n[0] == '.'; }), 0);
}

TEST_F(DirQueueStoreTest, RemoveByOwnerAndByOperator) {
  put(entry("r1"));
  put(entry("r2"));
  auto c = store_->claimDue("gw1", kNow, 60000, 1);
  ASSERT_TRUE(c && c->size() == 1);
  const std::string held = (*c)[0].id, other = held == "r1" ? "r2" : "r1";
  EXPECT_FALSE(store_->remove(held, "gw2").value());
  EXPECT_FALSE(store_->remove(other, "gw1").value());  // not leased to gw1
  EXPECT_TRUE(store_->remove(held, "gw1").value());
  EXPECT_FALSE(store_->remove(held, "gw1").value());
  EXPECT_TRUE(store_->remove(other, "").value());  // the operator
  EXPECT_FALSE(store_->remove(other, "").value());
  EXPECT_FALSE(store_->remove("../x", "").value());
  EXPECT_TRUE(files(dir_).empty());
}

TEST_F(DirQueueStoreTest, OperatorDeleteOfALeasedEntryLosesTheLease) {
  put(entry("d"));
  auto c = store_->claimDue("gw1", kNow, 60000, 1);
  ASSERT_TRUE(c && c->size() == 1);
  EXPECT_TRUE(store_->remove("d", "").value());
  EXPECT_FALSE(store_->update((*c)[0], "gw1", true).value());
  EXPECT_TRUE(files(dir_).empty());
}

TEST_F(DirQueueStoreTest, RetryNow) {
  put(entry("w", kNow, kNow + 3600000));
  EXPECT_TRUE(store_->claimDue("gw1", kNow, 1000, 10)->empty());
  EXPECT_TRUE(store_->retryNow("w").value());
  EXPECT_EQ(store_->get("w").value()->next_ms, 0);
  EXPECT_TRUE(store_->get("w").value()->lease_owner.empty());
  EXPECT_EQ(store_->claimDue("gw1", kNow, 1000, 10)->size(), 1u);
  EXPECT_FALSE(store_->retryNow("none").value());
  EXPECT_EQ(files(dir_).size(), 2u);
}

TEST_F(DirQueueStoreTest, SummaryAndFindByMessage) {
  auto s = store_->summary();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->entries, 0u);
  EXPECT_EQ(s->oldest_created_ms, 0);
  put(entry("x1", kNow - 50), "12345");
  put(entry("x2", kNow - 10), "1234567890");
  QueueEntry other = entry("x3", kNow - 5);
  other.message_id = "<m-x1@example.org>";
  other.mail_from = "<bob@example.org>";
  put(other, "1");
  s = store_->summary();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->entries, 3u);
  EXPECT_EQ(s->bytes, 16u);
  EXPECT_EQ(s->oldest_created_ms, kNow - 50);
  auto f = store_->findByMessage("<m-x1@example.org>", "<alice@example.org>");
  ASSERT_TRUE(f);
  ASSERT_EQ(f->size(), 1u);
  EXPECT_EQ((*f)[0].id, "x1");
  EXPECT_TRUE(store_->findByMessage("<nope@example.org>", "<alice@example.org>")->empty());
  EXPECT_TRUE(store_->findByMessage("", "<alice@example.org>")->empty());
}

// Every message a session takes is looked up while the queue holds entries: the
// metadata of an entry whose (Message-ID, sender) is known not to match is not read
// again (an entry's pair never changes; here a file rewritten behind the store's
// back shows it), while entries another process adds or removes are seen.
TEST_F(DirQueueStoreTest, FindByMessageReadsOnlyEntriesThatMayMatch) {
  put(entry("y1"));
  put(entry("y2"));
  ASSERT_TRUE(store_->findByMessage("<m-y2@example.org>", "<alice@example.org>"));
  std::string y1_meta;
  for (const auto& f : files(dir_))
    if (f.rfind("y1~", 0) == 0) y1_meta = dir_ + "/" + f;
  ASSERT_FALSE(y1_meta.empty());
  QueueEntry forged = entry("y1");
  forged.message_id = "<m-y2@example.org>";
  {
    std::ofstream out(y1_meta, std::ios::binary | std::ios::trunc);
    out << encodeQueueMeta(forged);
  }
  auto f = store_->findByMessage("<m-y2@example.org>", "<alice@example.org>");
  ASSERT_TRUE(f);
  ASSERT_EQ(f->size(), 1u);
  EXPECT_EQ((*f)[0].id, "y2");

  auto other = DirQueueStore::open(dir_, 1000, 1 << 20);
  ASSERT_TRUE(other) << other.error();
  std::string err;
  QueueEntry y3 = entry("y3");
  y3.message_id = "<m-y2@example.org>";
  ASSERT_EQ(other.value()->put(y3, StringBody("x"), &err), QueueStore::Put::kStored) << err;
  auto removed = other.value()->remove("y2", "");
  ASSERT_TRUE(removed) << removed.error();
  EXPECT_TRUE(removed.value());
  f = store_->findByMessage("<m-y2@example.org>", "<alice@example.org>");
  ASSERT_TRUE(f);
  ASSERT_EQ(f->size(), 1u);
  EXPECT_EQ((*f)[0].id, "y3");
}

TEST_F(DirQueueStoreTest, LeftoversAreIgnoredAndCleaned) {
  put(entry("k"));
  std::ofstream(dir_ + "/.tmp-123-0-0") << "half written";
  std::ofstream(dir_ + "/.tmp-young") << "being written";
  std::ofstream(dir_ + "/orphan.msg") << "a message whose meta was never renamed";
  std::ofstream(dir_ + "/young.msg") << "a put in progress";
  std::ofstream(dir_ + "/bad~~0") << "not meta";
  std::ofstream(dir_ + "/unrelated.txt") << "not ours";
  touchOld(dir_ + "/.tmp-123-0-0");
  touchOld(dir_ + "/orphan.msg");
  touchOld(dir_ + "/k.msg");  // old, but its entry lives
  EXPECT_EQ(store_->list(10)->size(), 1u);
  EXPECT_EQ(store_->summary()->entries, 1u);
  auto n = store_->cleanup(kNow);
  ASSERT_TRUE(n);
  EXPECT_EQ(n.value(), 2u);
  EXPECT_EQ(store_->claimDue("gw1", kNow, 1000, 10)->size(), 1u);
  EXPECT_EQ(files(dir_), (std::vector<std::string>{".tmp-young", "bad~~0", "k.msg", "k~gw1~1700000001000",
                                                   "unrelated.txt", "young.msg"}));
  // open() cleans with the real clock.
  ASSERT_TRUE(DirQueueStore::open(dir_, 10, 1000));
}

TEST_F(DirQueueStoreTest, OwnerNamesAreEscapedInFileNames) {
  put(entry("o"));
  auto c = store_->claimDue("host/a~b 1", kNow, 1000, 1);
  ASSERT_TRUE(c && c->size() == 1);
  EXPECT_EQ((*c)[0].lease_owner, "host/a~b 1");
  EXPECT_EQ(DirQueueStore::metaName("o", "host/a~b 1", 5), "o~host%2Fa%7Eb%201~5");
  EXPECT_EQ(store_->get("o").value()->lease_owner, "host/a~b 1");
  EXPECT_TRUE(store_->update((*c)[0], "host/a~b 1", true).value());
  EXPECT_FALSE(store_->claimDue(std::string(200, 'x'), kNow, 1000, 1));
  EXPECT_FALSE(store_->claimDue("", kNow, 1000, 1));
}

// Two processes claim from one directory at the same time: no entry twice.
TEST_F(DirQueueStoreTest, TwoProcessesNeverClaimTheSameEntry) {
  constexpr int kEntries = 200;
  for (int i = 0; i < kEntries; ++i) put(entry("p" + std::to_string(i), kNow + i), "m");
  int pipes[2][2];
  pid_t pids[2];
  for (int p = 0; p < 2; ++p) {
    ASSERT_EQ(::pipe(pipes[p]), 0);
    pids[p] = ::fork();
    ASSERT_GE(pids[p], 0);
    if (pids[p] == 0) {
      ::close(pipes[p][0]);
      auto s = DirQueueStore::open(dir_, 1000, 1 << 20);
      if (!s) ::_exit(2);
      const std::string owner = "proc" + std::to_string(p);
      std::string got;
      // Small batches, and each claimed entry released again with a later next_ms so
      // that the other process races for freshly freed names as well.
      for (int round = 0; round < 400; ++round) {
        auto c = s.value()->claimDue(owner, kNow + 1000, 60000, 3);
        if (!c) ::_exit(3);
        if (c->empty()) break;
        for (auto& e : c.value()) {
          got += e.id + "\n";
          e.next_ms = kNow + 10000000;
          auto u = s.value()->update(e, owner, true);
          if (!u || !u.value()) ::_exit(4);
        }
      }
      if (::write(pipes[p][1], got.data(), got.size()) != static_cast<ssize_t>(got.size())) ::_exit(5);
      ::_exit(0);
    }
    ::close(pipes[p][1]);
  }
  std::multiset<std::string> all;
  size_t per[2] = {0, 0};
  for (int p = 0; p < 2; ++p) {
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(pipes[p][0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(pipes[p][0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pids[p], &status, 0), pids[p]);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    for (size_t at = 0, nl; (nl = out.find('\n', at)) != std::string::npos; at = nl + 1) {
      all.insert(out.substr(at, nl - at));
      per[p]++;
    }
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kEntries));
  for (const auto& id : std::set<std::string>(all.begin(), all.end())) EXPECT_EQ(all.count(id), 1u) << id;
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), static_cast<size_t>(kEntries));
  // Every entry still there, once, released, with the later next_ms.
  auto l = store_->list(1000);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->size(), static_cast<size_t>(kEntries));
  for (const auto& e : l.value()) {
    EXPECT_TRUE(e.lease_owner.empty()) << e.id;
    EXPECT_EQ(e.next_ms, kNow + 10000000) << e.id;
  }
  EXPECT_EQ(files(dir_).size(), static_cast<size_t>(2 * kEntries));
  std::cerr << "claims: " << per[0] << " + " << per[1] << "\n";
}

// Two processes race to take over the same expired leases: each entry exactly once.
TEST_F(DirQueueStoreTest, TwoProcessesTakeOverExpiredLeasesOnce) {
  constexpr int kEntries = 200;
  for (int i = 0; i < kEntries; ++i) put(entry("t" + std::to_string(i), kNow + i), "m");
  ASSERT_EQ(store_->claimDue("dead", kNow, 1000, kEntries)->size(), static_cast<size_t>(kEntries));
  int pipes[2][2];
  pid_t pids[2];
  for (int p = 0; p < 2; ++p) {
    ASSERT_EQ(::pipe(pipes[p]), 0);
    pids[p] = ::fork();
    ASSERT_GE(pids[p], 0);
    if (pids[p] == 0) {
      ::close(pipes[p][0]);
      auto s = DirQueueStore::open(dir_, 1000, 1 << 20);
      if (!s) ::_exit(2);
      std::string got;
      for (;;) {
        auto c = s.value()->claimDue("taker" + std::to_string(p), kNow + 5000, 600000, 2);
        if (!c) ::_exit(3);
        if (c->empty()) break;
        for (const auto& e : c.value()) got += e.id + "\n";
      }
      if (::write(pipes[p][1], got.data(), got.size()) != static_cast<ssize_t>(got.size())) ::_exit(5);
      ::_exit(0);
    }
    ::close(pipes[p][1]);
  }
  std::multiset<std::string> all;
  for (int p = 0; p < 2; ++p) {
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(pipes[p][0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(pipes[p][0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pids[p], &status, 0), pids[p]);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    for (size_t at = 0, nl; (nl = out.find('\n', at)) != std::string::npos; at = nl + 1)
      all.insert(out.substr(at, nl - at));
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kEntries));
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), static_cast<size_t>(kEntries));
  EXPECT_EQ(files(dir_).size(), static_cast<size_t>(2 * kEntries));
}

}  // namespace
}  // namespace mailgate::queue
