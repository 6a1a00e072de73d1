// The dir quarantine store: what put() wrote reads back whole (metadata and message,
// byte for byte), the listing ignores a temp file left by a crash, a claim keeps a
// second release out, expiry goes by the creation time, and the metadata codec
// refuses what it did not write.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "filters/quarantine.h"

namespace mailgate::filters {
namespace {

namespace fs = std::filesystem;

std::string readAll(const MessageBody& b) {
  std::string all, chunk;
  for (uint64_t off = 0; off < b.size(); off += chunk.size()) {
    EXPECT_TRUE(b.read(off, 7, &chunk));  // small reads: offsets matter
    if (chunk.empty()) break;
    all += chunk;
  }
  return all;
}

QuarantineEntry sample() {
  QuarantineEntry e;
  e.reason = "sender matched: spam\r\nX: injected";  // odd characters survive
  e.filter = "policy:q";
  e.ref = "7f3a9c";
  e.mail_from = "<a@example.net>";
  e.rcpts = {"<u1@example.org>", "<U2@Example.org>"};
  e.client_ip = "192.0.2.7";
  e.helo = "mx.example.net";
  e.listener = "mx";
  e.session_id = "s-1";
  e.body_8bit = true;
  return e;
}

class DirStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-qstore-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(DirStoreTest, PutThenGetReadsBackEverything) {
  auto store = DirQuarantineStore::open((dir_ / "q").string());  // created
  ASSERT_TRUE(store) << store.error();
  std::string message = "Received: x\r\nSubject: hi\r\n\r\n";
  for (int i = 0; i < 5000; ++i) message += "line " + std::to_string(i) + "\r\n.\r\n";
  auto id = store.value()->put(sample(), StringBody(message));
  ASSERT_TRUE(id) << id.error();
  EXPECT_TRUE(validQuarantineId(id.value()));
  // Durable means: the final name exists (renamed), no temp file is left.
  EXPECT_TRUE(fs::exists(dir_ / "q" / (id.value() + ".msg")));
  for (const auto& f : fs::directory_iterator(dir_ / "q")) EXPECT_NE(f.path().filename().string()[0], '.');

  std::shared_ptr<const MessageBody> body;
  auto e = store.value()->get(id.value(), &body);
  ASSERT_TRUE(e) << e.error();
  EXPECT_EQ(e.value().id, id.value());
  EXPECT_EQ(e.value().reason, sample().reason);
  EXPECT_EQ(e.value().rcpts, sample().rcpts);
  EXPECT_EQ(e.value().mail_from, "<a@example.net>");
  EXPECT_TRUE(e.value().body_8bit);
  EXPECT_FALSE(e.value().smtputf8);
  EXPECT_EQ(e.value().size, message.size());
  EXPECT_GT(e.value().created_ms, 0);
  ASSERT_NE(body, nullptr);
  EXPECT_EQ(body->size(), message.size());
  EXPECT_EQ(readAll(*body), message);
  EXPECT_EQ(store.value()->count().value(), 1u);
}

TEST_F(DirStoreTest, ListIgnoresTempFilesAndFiltersNewestFirst) {
  auto store = DirQuarantineStore::open(dir_.string()).value();
  QuarantineEntry a = sample();
  a.created_ms = 1000000;
  QuarantineEntry b = sample();
  b.created_ms = 2000000;
  b.mail_from = "<other@example.com>";
  const std::string ida = store->put(a, StringBody("A\r\n")).value();
  const std::string idb = store->put(b, StringBody("B\r\n")).value();
  // A crash mid-write leaves a temp file: never listed, never counted.
  std::ofstream(dir_ / (".tmp-" + newQuarantineId(3000000))) << "mailgate-quarantine: 1\nid: x";
  std::ofstream(dir_ / "README") << "not an entry";
  auto all = store->list({}, 10).value();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].id, idb);
  EXPECT_EQ(all[1].id, ida);
  EXPECT_EQ(store->count().value(), 2u);
  QuarantineFilter f;
  f.from = "OTHER@";
  auto some = store->list(f, 10).value();
  ASSERT_EQ(some.size(), 1u);
  EXPECT_EQ(some[0].id, idb);
  f = {};
  f.rcpt = "u2@example";
  EXPECT_EQ(store->list(f, 10).value().size(), 2u);
  EXPECT_EQ(store->list({}, 1).value().size(), 1u);
}

TEST_F(DirStoreTest, RemoveClaimAndDelivered) {
  auto store = DirQuarantineStore::open(dir_.string()).value();
  const std::string id = store->put(sample(), StringBody("M\r\n")).value();
  EXPECT_EQ(store->claim(id), QuarantineStore::Claim::kClaimed);
  EXPECT_EQ(store->claim(id), QuarantineStore::Claim::kBusy);  // a second release waits
  ASSERT_TRUE(store->setDelivered(id, {"<u1@example.org>"}));
  std::shared_ptr<const MessageBody> body;
  auto e = store->get(id, &body).value();
  EXPECT_EQ(e.delivered, std::vector<std::string>{"<u1@example.org>"});
  EXPECT_EQ(readAll(*body), "M\r\n");  // the rewrite keeps the message
  store->unclaim(id);
  EXPECT_EQ(store->claim(id), QuarantineStore::Claim::kClaimed);
  store->unclaim(id);
  EXPECT_TRUE(store->remove(id).value());
  EXPECT_FALSE(store->remove(id).value());
  EXPECT_EQ(store->claim(id), QuarantineStore::Claim::kNotFound);
  EXPECT_EQ(store->get(id, nullptr).error(), "not found");
  EXPECT_EQ(store->get("../../etc/passwd", nullptr).error(), "not found");
}

TEST_F(DirStoreTest, ExpireByCreationTimeAndStaleTempFiles) {
  auto store = DirQuarantineStore::open(dir_.string()).value();
  QuarantineEntry old_e = sample();
  old_e.created_ms = wallMs() - 10000;
  const std::string old_id = store->put(old_e, StringBody("old\r\n")).value();
  const std::string new_id = store->put(sample(), StringBody("new\r\n")).value();
  const fs::path tmp = dir_ / ".tmp-000000000000000000000000";
  std::ofstream(tmp) << "partial";
  fs::last_write_time(tmp, fs::file_time_type::clock::now() - std::chrono::hours(1));
  // A claimed entry (a release runs) is left alone.
  ASSERT_EQ(store->claim(old_id), QuarantineStore::Claim::kClaimed);
  EXPECT_EQ(store->expire(wallMs() - 5000).value(), 0u);
  store->unclaim(old_id);
  EXPECT_EQ(store->expire(wallMs() - 5000).value(), 1u);
  EXPECT_FALSE(fs::exists(tmp));
  auto left = store->list({}, 10).value();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].id, new_id);
}

TEST_F(DirStoreTest, OpenRefusesWhatIsNotAWritableDirectory) {
  std::ofstream(dir_ / "file") << "x";
  EXPECT_FALSE(DirQuarantineStore::open((dir_ / "file").string()));
  EXPECT_FALSE(DirQuarantineStore::open("relative/dir"));
  EXPECT_FALSE(DirQuarantineStore::open((dir_ / "no" / "parent").string()));
}

TEST(QuarantineMeta, RoundTripAndRefusals) {
  QuarantineEntry e = sample();
  e.id = newQuarantineId(wallMs());
  e.created_ms = 42;
  e.size = 7;
  e.delivered = {"<u1@example.org>"};
  const std::string text = encodeQuarantineMeta(e);
  EXPECT_EQ(text.find("\r"), std::string::npos);  // one line a key, whatever the values hold
  QuarantineEntry back;
  ASSERT_TRUE(decodeQuarantineMeta(text, &back));
  EXPECT_EQ(back.reason, e.reason);
  EXPECT_EQ(back.rcpts, e.rcpts);
  EXPECT_EQ(back.delivered, e.delivered);
  EXPECT_EQ(back.size, 7u);
  EXPECT_FALSE(decodeQuarantineMeta(text.substr(0, text.size() - 1), &back));  // no empty line: truncated
  EXPECT_FALSE(decodeQuarantineMeta("something else\n\n", &back));
  EXPECT_FALSE(decodeQuarantineMeta("mailgate-quarantine: 1\nid: %zz\n\n", &back));
  EXPECT_FALSE(decodeQuarantineMeta("mailgate-quarantine: 1\nid: abc\ncreated_ms: 1\nsize: 1\n\n", &back));
  EXPECT_TRUE(validQuarantineId(newQuarantineId(0)));
  EXPECT_NE(newQuarantineId(5), newQuarantineId(5));
  EXPECT_FALSE(validQuarantineId("0123456789abcdef0123456G"));
}

}  // namespace
}  // namespace mailgate::filters
