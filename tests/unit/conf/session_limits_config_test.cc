// The configuration of the session-level protections: the default line_timeout cuts
// a trickling line well within the 30 s the acceptance asks for; append_limit is an
// imap listener's key.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

namespace fs = std::filesystem;

class SessionLimitsConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-conf-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "users.passwd") << "user@example.org:{PLAIN}secret\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  LoadResult load(const std::string& listeners, const std::string& rest = "") {
    return loadConfigText(
        "directory: { file: { users: users.passwd } }\n"
        "backends:\n"
        "  - { name: b1, host: 127.0.0.1, ports: { imap: 143, pop3: 110 } }\n"
        "listeners:\n" +
            listeners + rest,
        (dir_ / "mailgate.yaml").string());
  }
  fs::path dir_;
};

TEST_F(SessionLimitsConfig, DefaultLineTimeoutCutsATrickleWithin30s) {
  const LoadResult r = load("  - { name: l1, protocol: imap, listen: \"127.0.0.1:1143\" }\n");
  ASSERT_NE(r.config, nullptr);
  const auto lt = r.config->policy.limits.line_timeout;
  EXPECT_EQ(lt, std::chrono::seconds(20));
  // The deadline runs from the line's first byte, whatever follows; the session's
  // timer is checked every 100 ms.
  EXPECT_LT(lt + std::chrono::milliseconds(100), std::chrono::seconds(30));
}

TEST_F(SessionLimitsConfig, LimitsLineTimeoutAndEarlyTalker) {
  const LoadResult r = load("  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\" }\n",
                            "limits:\n  line_timeout: 4s\n"
                            "  early_talker: { listeners: [mx], greet_wait: 2s, action: tempfail }\n");
  for (const auto& e : r.errors) ADD_FAILURE() << e.format();
  ASSERT_NE(r.config, nullptr);
  const LimitsConfig& l = r.config->policy.limits;
  EXPECT_EQ(l.line_timeout, std::chrono::seconds(4));
  ASSERT_EQ(l.early_talker.listeners.size(), 1u);
  EXPECT_EQ(l.early_talker.listeners[0], "mx");
  EXPECT_EQ(l.early_talker.greet_wait, std::chrono::seconds(2));
  EXPECT_EQ(l.early_talker.action, LimitAction::kTempfail);
}

TEST_F(SessionLimitsConfig, AppendLimitOnImapOnly) {
  LoadResult r = load("  - { name: l1, protocol: imap, listen: \"127.0.0.1:1143\", append_limit: 10M }\n");
  ASSERT_NE(r.config, nullptr);
  EXPECT_EQ(r.config->listeners[0].append_limit, 10u << 20);
  r = load("  - { name: p1, protocol: pop3, listen: \"127.0.0.1:1110\", append_limit: 10M }\n");
  EXPECT_EQ(r.config, nullptr);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].message.find("only an imap listener"), std::string::npos) << r.errors[0].message;
}

}  // namespace
}  // namespace mailgate::conf
