#include "gateway/admin/queue_api.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mailgate::admin {
namespace {

queue::QueueEntry sample() {
  queue::QueueEntry e;
  e.id = "Ab3x-7";
  e.created_ms = 1'800'000'000'000;
  e.next_ms = 1'800'000'120'000;
  e.attempts = 2;
  e.mail_from = "<carol@example.com>";
  e.rcpts = {
      {"<dave@example.org>", queue::RcptState::kDelivered, "250 delivered to n1", 1'800'000'001'000},
      {"<frank@example.org>", queue::RcptState::kPending, "452 4.2.2 \"full\"\x01", 1'800'000'060'000}};
  e.listener = "mx";
  e.size = 1234;
  return e;
}

TEST(QueuePath, Routes) {
  std::string id;
  bool valid = false;
  EXPECT_EQ(parseQueuePath("/queue/Ab3x-7", &id, &valid), QueueRoute::kEntry);
  EXPECT_EQ(id, "Ab3x-7");
  EXPECT_TRUE(valid);
  EXPECT_EQ(parseQueuePath("/queue/Ab3x-7.dsn1/retry", &id, &valid), QueueRoute::kRetry);
  EXPECT_EQ(id, "Ab3x-7.dsn1");
  EXPECT_TRUE(valid);
  EXPECT_EQ(parseQueuePath("/queue/Ab3x-7/delete", &id, &valid), QueueRoute::kDelete);
  EXPECT_EQ(id, "Ab3x-7");
  // An id the store would not take: the route is known, the id is not valid (400).
  EXPECT_EQ(parseQueuePath("/queue/a b", &id, &valid), QueueRoute::kEntry);
  EXPECT_FALSE(valid);
  EXPECT_EQ(parseQueuePath("/queue/" + std::string(65, 'a'), &id, &valid), QueueRoute::kEntry);
  EXPECT_FALSE(valid);
  EXPECT_EQ(parseQueuePath("/queue/../x/retry", &id, &valid), QueueRoute::kRetry);
  EXPECT_FALSE(valid);
  EXPECT_EQ(parseQueuePath("/queue//retry", &id, &valid), QueueRoute::kEntry);  // the id "/retry"
  EXPECT_FALSE(valid);
  for (const char* none : {"/queue/", "/queue", "/queuex/a", "/quarantine/a"})
    EXPECT_EQ(parseQueuePath(none, &id, &valid), QueueRoute::kNone) << none;
}

TEST(QueueList, Limit) {
  HttpRequest r;
  size_t limit = 0;
  std::string error;
  ASSERT_TRUE(parseRequestLine("GET /queue HTTP/1.0", &r));
  ASSERT_TRUE(parseQueueList(r, &limit, &error));
  EXPECT_EQ(limit, kQueueListDefault);
  ASSERT_TRUE(parseRequestLine("GET /queue?limit=7 HTTP/1.0", &r));
  ASSERT_TRUE(parseQueueList(r, &limit, &error));
  EXPECT_EQ(limit, 7u);
  for (const char* bad : {"GET /queue?limit=0 HTTP/1.0", "GET /queue?limit=x HTTP/1.0",
                          "GET /queue?limit=10001 HTTP/1.0", "GET /queue?limit= HTTP/1.0"}) {
    ASSERT_TRUE(parseRequestLine(bad, &r));
    EXPECT_FALSE(parseQueueList(r, &limit, &error)) << bad;
  }
}

TEST(QueueJson, EntryWithRecipients) {
  const std::string j = queueEntryJson(sample(), true);
  EXPECT_NE(j.find("\"id\":\"Ab3x-7\""), std::string::npos);
  EXPECT_NE(j.find("\"attempts\":2"), std::string::npos);
  EXPECT_NE(j.find("\"pending\":1,\"delivered\":1,\"failed\":0,\"reported\":0"), std::string::npos);
  EXPECT_NE(j.find("{\"addr\":\"<dave@example.org>\",\"state\":\"delivered\""), std::string::npos);
  EXPECT_NE(j.find("\"reply\":\"452 4.2.2 \\\"full\\\"\\u0001\""), std::string::npos);
  EXPECT_NE(j.find("\"next_attempt\":\"2027-01-15T08:02:00Z\""), std::string::npos);
  EXPECT_EQ(queueEntryJson(sample(), false).find("\"rcpts\""), std::string::npos);
  EXPECT_EQ(queueJson({}), "[]\n");
}

TEST(QueueTable, OneLinePerEntryPrintable) {
  const std::string t = queueTable({sample(), sample()}, 1'800'000'090'000);
  size_t lines = 0;
  for (char c : t) lines += c == '\n';
  EXPECT_EQ(lines, 3u);
  EXPECT_EQ(t.rfind("ID", 0), 0u);
  EXPECT_NE(t.find("<frank@example.org>: 452 4.2.2 \"full\"?"), std::string::npos);
  EXPECT_NE(t.find("1m30s"), std::string::npos);  // its age
  EXPECT_NE(t.find("30s"), std::string::npos);    // the next attempt
  EXPECT_EQ(t.find('\x01'), std::string::npos);
}

}  // namespace
}  // namespace mailgate::admin
