// hooks.quarantine: the store, its directory, the retention, and `then: quarantine`
// in the policies (allowed once a store is configured, whatever the section order).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

::testing::Matcher<std::string> At(int line, int col, const std::string& text) {
  return AllOf(StartsWith(std::to_string(line) + ":" + std::to_string(col) + ": "), HasSubstr(text));
}

class QuarantineConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-quarantine-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "users.passwd") << "user@example.org:{PLAIN}secret\n";
  }
  void TearDown() override {
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
    fs::remove_all(dir_);
  }
  std::string path() const { return (dir_ / "mailgate.yaml").string(); }

  std::vector<std::string> errors(const std::string& yaml) {
    const LoadResult r = loadConfigText(yaml, path());
    std::vector<std::string> out;
    for (const auto& e : r.errors)
      out.push_back(std::to_string(e.line) + ":" + std::to_string(e.column) + ": " + e.message);
    EXPECT_EQ(r.config == nullptr, !out.empty());
    return out;
  }
  std::shared_ptr<const Config> ok(const std::string& yaml) {
    const LoadResult r = loadConfigText(yaml, path());
    for (const auto& e : r.errors) ADD_FAILURE() << e.format();
    return r.config;
  }

  fs::path dir_;
};

// 5 lines: tests append from line 6.
const std::string kBase =
    "directory: { file: { users: users.passwd } }\n"                       // 1
    "backends:\n"                                                          // 2
    "  - { name: b1, host: 127.0.0.1, ports: { imap: 143, lmtp: 24 } }\n"  // 3
    "listeners:\n"                                                         // 4
    "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\" }\n";      // 5

TEST_F(QuarantineConfigTest, AbsentMeansNoStore) {
  auto c = ok(kBase);
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->hooks.quarantine.store.empty());
  EXPECT_EQ(c->hooks.quarantine.retention, Duration(30LL * 86400000));
}

TEST_F(QuarantineConfigTest, DirStoreRelativeToTheConfigAndCreatedLater) {
  auto c = ok(kBase + "hooks:\n  quarantine: { store: dir, dir: held, retention: 2s }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->hooks.quarantine.store, "dir");
  EXPECT_EQ(c->hooks.quarantine.dir, (dir_ / "held").string());  // created at start, not at load
  EXPECT_EQ(c->hooks.quarantine.retention, Duration(2000));
}

TEST_F(QuarantineConfigTest, StoreErrors) {
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { store: tape }\n"),  // 6, 7
              ElementsAre(At(7, 24, "hooks.quarantine.store: expected one of dir, postgres, got \"tape\"")));
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { store: dir }\n"),
              ElementsAre(At(7, 24, "hooks.quarantine.store: dir needs hooks.quarantine.dir")));
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { dir: /tmp }\n"),
              ElementsAre(At(7, 15, "hooks.quarantine: missing required key \"store\"")));
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { store: postgres }\n"),
              ElementsAre(At(7, 24, "hooks.quarantine.store: postgres needs directory.driver postgres")));
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { store: dir, dir: /tmp, retention: 0s, colour: red }\n"),
              ElementsAre(At(7, 51, "hooks.quarantine.retention: must be greater than 0"),
                          At(7, 55, "unknown key \"colour\" in hooks.quarantine")));
  std::ofstream(dir_ / "file") << "x";
  EXPECT_THAT(
      errors(kBase + "hooks:\n  quarantine: { store: dir, dir: file }\n"),
      ElementsAre(At(7, 34, "hooks.quarantine.dir: " + (dir_ / "file").string() + " is not a directory")));
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { store: dir, dir: no/such/parent }\n"),
              ElementsAre(At(7, 34, "does not exist and cannot be created")));
}

TEST_F(QuarantineConfigTest, UnwritableDirectoryIsAnError) {
  if (geteuid() == 0) GTEST_SKIP() << "root writes anywhere";
  fs::create_directory(dir_ / "ro");
  fs::permissions(dir_ / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  EXPECT_THAT(errors(kBase + "hooks:\n  quarantine: { store: dir, dir: ro }\n"),
              ElementsAre(At(7, 34, "hooks.quarantine.dir: cannot write to")));
}

TEST_F(QuarantineConfigTest, PolicyQuarantineNeedsAStoreWhateverTheOrder) {
  const std::string rule =
      "policies:\n  - { name: q, stage: data, when: { sender: { re2: x } }, then: quarantine }\n";
  // 6, 7: the policy; no store.
  EXPECT_THAT(errors(kBase + rule),
              ElementsAre(At(7, 65, "policies[0].then: quarantine needs a store (hooks.quarantine.store")));
  // hooks before policies, and after: both fine.
  EXPECT_NE(ok(kBase + "hooks:\n  quarantine: { store: dir, dir: q }\n" + rule), nullptr);
  EXPECT_NE(ok(kBase + rule + "hooks:\n  quarantine: { store: dir, dir: q }\n"), nullptr);
  // Only at stage data.
  EXPECT_THAT(errors(kBase + "policies:\n  - { name: q, stage: mail, then: quarantine }\n" +
                     "hooks:\n  quarantine: { store: dir, dir: q }\n"),
              ElementsAre(At(7, 35, "policies[0].then: quarantine holds a message, so only at stage data")));
}

}  // namespace
}  // namespace mailgate::conf
