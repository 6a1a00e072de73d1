#include "gateway/admin/quarantine_api.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mailgate::admin {
namespace {

const std::string kId = "0123456789abcdef01234567";

TEST(QuarantinePath, IdAndRelease) {
  std::string id;
  bool release = true;
  ASSERT_TRUE(parseQuarantinePath("/quarantine/" + kId, &id, &release));
  EXPECT_EQ(id, kId);
  EXPECT_FALSE(release);
  ASSERT_TRUE(parseQuarantinePath("/quarantine/" + kId + "/release", &id, &release));
  EXPECT_EQ(id, kId);
  EXPECT_TRUE(release);
  const std::vector<std::string> bad_paths = {"/quarantine/",
                                              "/quarantine/../etc",
                                              "/quarantine/" + kId + "/",
                                              "/quarantine/" + kId + "/delete",
                                              "/quarantine/" + kId.substr(1),
                                              "/quarantinex/" + kId,
                                              "/quarantine/0123456789ABCDEF01234567"};
  for (const std::string& bad : bad_paths) EXPECT_FALSE(parseQuarantinePath(bad, &id, &release)) << bad;
}

TEST(QuarantineList, Parameters) {
  HttpRequest r;
  filters::QuarantineFilter f;
  size_t limit = 0;
  std::string error;
  ASSERT_TRUE(parseRequestLine("GET /quarantine HTTP/1.0", &r));
  ASSERT_TRUE(parseQuarantineList(r, &f, &limit, &error));
  EXPECT_EQ(limit, kQuarantineListDefault);
  ASSERT_TRUE(parseRequestLine("GET /quarantine?limit=5&rcpt=alice%40&from=spam HTTP/1.0", &r));
  ASSERT_TRUE(parseQuarantineList(r, &f, &limit, &error));
  EXPECT_EQ(limit, 5u);
  EXPECT_EQ(f.rcpt, "alice@");
  EXPECT_EQ(f.from, "spam");
  for (const char* bad : {"0", "10001", "x", "-1", "", "99999999999"}) {
    ASSERT_TRUE(parseRequestLine(std::string("GET /quarantine?limit=") + bad + " HTTP/1.0", &r));
    EXPECT_FALSE(parseQuarantineList(r, &f, &limit, &error)) << bad;
    EXPECT_NE(error.find("limit"), std::string::npos);
  }
}

TEST(QuarantineJson, EscapedFields) {
  filters::QuarantineEntry e;
  e.id = kId;
  e.created_ms = 1764892800000;
  e.reason = "quote \" and\r\nnewline";
  e.mail_from = "<a@example.net>";
  e.rcpts = {"<b@example.org>"};
  e.size = 12;
  const std::string j = quarantineEntryJson(e);
  EXPECT_NE(j.find("\"id\":\"" + kId + "\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"reason\":\"quote \\\" and\\r\\nnewline\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"rcpts\":[\"<b@example.org>\"]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"created\":\"2025-12-05T00:00:00Z\""), std::string::npos) << j;
  const std::string t = quarantineTable({e});
  EXPECT_EQ(t.find('\r'), std::string::npos);  // control characters never reach a terminal
  EXPECT_NE(t.find(kId), std::string::npos);
  session::ReleaseOutcome r;
  r.status = session::ReleaseOutcome::Status::kPartial;
  r.delivered = {"<b@example.org>"};
  r.failed = {{"<c@example.org>", "550 5.1.1 unknown"}};
  EXPECT_EQ(releaseJson(kId, r),
            "{\"id\":\"" + kId +
                "\",\"released\":false,\"delivered\":[\"<b@example.org>\"],\"failed\":[{\"rcpt\":"
                "\"<c@example.org>\",\"error\":\"550 5.1.1 unknown\"}]}\n");
}

}  // namespace
}  // namespace mailgate::admin
