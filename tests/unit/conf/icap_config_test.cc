// hooks.scanners of type icap: url, method, on_modified and the common scanner keys;
// every bad value is reported with its line and column.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "conf/config.h"
#include "conf/icap_url.h"

namespace mailgate::conf {
namespace {

namespace fs = std::filesystem;

class IcapConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-conf-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "users.passwd") << "user@example.org:{PLAIN}secret\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Lines 1-6 are the base; `hooks` starts on line 7.
  LoadResult load(const std::string& hooks) {
    return loadConfigText(
        "directory: { file: { users: users.passwd } }\n"
        "backends:\n"
        "  - { name: b1, host: 127.0.0.1, ports: { imap: 143, pop3: 110 } }\n"
        "listeners:\n"
        "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\" }\n"
        "routing: { static: [ { domain: example.org, primary: b1 } ] }\n" +
            hooks,
        (dir_ / "mailgate.yaml").string());
  }
  std::vector<std::string> errors(const std::string& hooks) {
    std::vector<std::string> out;
    for (const auto& e : load(hooks).errors)
      out.push_back(std::to_string(e.line) + ":" + std::to_string(e.column) + ": " + e.message);
    return out;
  }
  fs::path dir_;
};

TEST_F(IcapConfig, KeysAndDefaults) {
  const LoadResult r = load(
      "hooks:\n"
      "  scanners:\n"
      "    av: { type: icap, url: \"icap://127.0.0.1/avscan\" }\n"
      "    rw: { type: icap, url: \"icap://[::1]:11344/echo\", method: reqmod, on_modified: ignore,\n"
      "          on_error: accept, timeouts: { connect: 1s, scan: 3s }, max_size: 2M, on_oversize: reject,\n"
      "          breaker: { failures: 3, open: 10s } }\n"
      "  flows: [ { run: [av, rw] } ]\n");
  for (const auto& e : r.errors) ADD_FAILURE() << e.format();
  ASSERT_NE(r.config, nullptr);
  const auto& s = r.config->hooks.scanners;
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].type, "icap");
  EXPECT_EQ(s[0].url, "icap://127.0.0.1/avscan");
  EXPECT_EQ(s[0].method, "respmod");
  EXPECT_EQ(s[0].on_modified, ModifiedAction::kAccept);
  EXPECT_FALSE(s[0].on_error.has_value());
  EXPECT_EQ(s[1].method, "reqmod");
  EXPECT_EQ(s[1].on_modified, ModifiedAction::kIgnore);
  EXPECT_EQ(s[1].on_error, HookAction::kAccept);
  EXPECT_EQ(s[1].connect_timeout, Duration(1000));
  EXPECT_EQ(s[1].scan_timeout, Duration(3000));
  EXPECT_EQ(s[1].max_size, 2ull << 20);
  EXPECT_EQ(s[1].on_oversize, OversizeAction::kReject);
  EXPECT_EQ(s[1].breaker_failures, 3u);
  IcapUrl u;
  std::string why;
  ASSERT_TRUE(parseIcapUrl(s[1].url, &u, &why)) << why;
  EXPECT_EQ(u.port, 11344);
  EXPECT_EQ(u.service, "echo");
}

TEST_F(IcapConfig, Errors) {
  EXPECT_EQ(errors("hooks:\n"                                                          // 7
                   "  scanners:\n"                                                     // 8
                   "    a: { type: icap }\n"                                           // 9
                   "    b: { type: icap, url: \"icap://icap.example/av\" }\n"           // 10
                   "    c: { type: icap, url: \"http://127.0.0.1/av\" }\n"              // 11
                   "    d: { type: icap, url: \"icap://127.0.0.1:99999/av\" }\n"        // 12
                   "    e: { type: icap, url: \"icap://127.0.0.1\" }\n"                 // 13
                   "    f: { type: icap, url: \"icap://127.0.0.1/av\", method: options }\n"  // 14
                   "    g: { type: icap, url: \"icap://127.0.0.1/av\", on_modified: keep }\n"  // 15
                   "    h: { type: icap, url: \"icap://127.0.0.1/av\", endpoints: [x] }\n"     // 16
                   "    i: { type: icap, url: [1] }\n"),                                    // 17
            (std::vector<std::string>{
                "9:5: hooks.scanners.a: missing required key \"url\"",
                "10:27: hooks.scanners.b.url: \"icap://icap.example/av\": the host must be a numeric IPv4 or [IPv6] "
                "address (no names: nothing may block)",
                "11:27: hooks.scanners.c.url: \"http://127.0.0.1/av\": expected icap://HOST[:PORT]/SERVICE",
                "12:27: hooks.scanners.d.url: \"icap://127.0.0.1:99999/av\": the port must be a number from 1 to 65535",
                "13:27: hooks.scanners.e.url: \"icap://127.0.0.1\": missing /SERVICE after the host",
                "14:58: hooks.scanners.f.method: expected one of respmod, reqmod, got \"options\"",
                "15:63: hooks.scanners.g.on_modified: expected one of accept, reject, ignore, got \"keep\"",
                "16:50: unknown key \"endpoints\" in hooks.scanners.h",
                "17:27: hooks.scanners.i.url: expected an icap:// URL, got a list",
            }));
}

}  // namespace
}  // namespace mailgate::conf
