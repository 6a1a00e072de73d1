// Networks for the policy: parseCidr's errors and normalisation, and IpSet
// membership (merged ranges, boundaries, both families, files with comments).
#include "filters/policy/ip_set.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace mailgate::filters::policy {
namespace {

NetAddr addr(const char* s) {
  NetAddr a;
  EXPECT_TRUE(parseAddr(s, &a)) << s;
  return a;
}

TEST(PolicyCidr, ParsesAndClearsHostBits) {
  NetAddr n;
  ASSERT_TRUE(parseCidr("10.1.2.3/8", &n));
  EXPECT_EQ(n.text(), "10.0.0.0/8");
  ASSERT_TRUE(parseCidr("2001:db8::1/32", &n));
  EXPECT_EQ(n.text(), "2001:db8::/32");
  ASSERT_TRUE(parseCidr("192.0.2.1", &n));
  EXPECT_EQ(n.prefix, 32);
  ASSERT_TRUE(parseCidr("::ffff:192.0.2.0/120", &n));  // mapped: IPv6 bits
  EXPECT_EQ(n.family, 4);
  EXPECT_EQ(n.text(), "192.0.2.0/24");
  ASSERT_TRUE(parseCidr("0.0.0.0/0", &n));
  EXPECT_EQ(n.prefix, 0);
}

TEST(PolicyCidr, Errors) {
  for (const char* bad : {"", "/", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/8x", "10.0.0/8",
                          "2001:db8::/129", "example.org", "10.0.0.0 /8", "1.2.3.4/+8", "::ffff:1.2.3.4/129"}) {
    NetAddr n;
    std::string err;
    EXPECT_FALSE(parseCidr(bad, &n, &err)) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
  std::string err;
  NetAddr n;
  EXPECT_FALSE(parseCidr("10.0.0.0/33", &n, &err));
  EXPECT_NE(err.find("prefix"), std::string::npos) << err;
  EXPECT_FALSE(parseCidr("nope", &n, nullptr));  // no error text asked for
}

TEST(PolicyIpSet, MembershipAndBoundaries) {
  IpSet s;
  ASSERT_TRUE(s.add("192.0.2.0/24"));
  ASSERT_TRUE(s.add("198.51.100.7"));
  ASSERT_TRUE(s.add("2001:db8:1::/48"));
  s.finish();
  EXPECT_TRUE(s.contains(addr("192.0.2.0")));
  EXPECT_TRUE(s.contains(addr("192.0.2.255")));
  EXPECT_FALSE(s.contains(addr("192.0.1.255")));
  EXPECT_FALSE(s.contains(addr("192.0.3.0")));
  EXPECT_TRUE(s.contains(addr("198.51.100.7")));
  EXPECT_FALSE(s.contains(addr("198.51.100.6")));
  EXPECT_FALSE(s.contains(addr("198.51.100.8")));
  EXPECT_TRUE(s.contains(addr("::ffff:192.0.2.9")));  // mapped = IPv4
  EXPECT_TRUE(s.contains(addr("2001:db8:1::")));
  EXPECT_TRUE(s.contains(addr("2001:db8:1:ffff:ffff:ffff:ffff:ffff")));
  EXPECT_FALSE(s.contains(addr("2001:db8:0:ffff:ffff:ffff:ffff:ffff")));
  EXPECT_FALSE(s.contains(addr("2001:db8:2::")));
  EXPECT_FALSE(s.contains(addr("::192.0.2.1")));  // IPv4-compatible is IPv6, not IPv4
  EXPECT_FALSE(s.contains(NetAddr{}));
  // A network is a member when the whole of it is.
  NetAddr n;
  ASSERT_TRUE(parseCidr("192.0.2.128/25", &n));
  EXPECT_TRUE(s.contains(n));
  ASSERT_TRUE(parseCidr("192.0.2.0/23", &n));
  EXPECT_FALSE(s.contains(n));
}

TEST(PolicyIpSet, MergesOverlappingAndAdjacent) {
  IpSet s;
  ASSERT_TRUE(s.add("10.0.0.0/25"));
  ASSERT_TRUE(s.add("10.0.0.128/25"));  // adjacent
  ASSERT_TRUE(s.add("10.0.0.5"));       // inside
  ASSERT_TRUE(s.add("10.0.1.0/24"));    // adjacent again
  ASSERT_TRUE(s.add("10.0.3.0/24"));    // a gap
  ASSERT_TRUE(s.add("255.255.255.255"));
  ASSERT_TRUE(s.add("255.255.255.254"));
  ASSERT_TRUE(s.add("0.0.0.0"));
  ASSERT_TRUE(s.add("::/1"));
  ASSERT_TRUE(s.add("8000::/1"));
  s.finish();
  // 0.0.0.0, 10.0.0.0-10.0.1.255, 10.0.3.0/24, 255.255.255.254/31; ::/0
  EXPECT_EQ(s.size(), 5u);
  NetAddr n;
  ASSERT_TRUE(parseCidr("10.0.0.0/23", &n));
  EXPECT_TRUE(s.contains(n));
  EXPECT_FALSE(s.contains(addr("10.0.2.0")));
  EXPECT_TRUE(s.contains(addr("10.0.3.200")));
  EXPECT_TRUE(s.contains(addr("255.255.255.255")));
  EXPECT_TRUE(s.contains(addr("0.0.0.0")));
  EXPECT_FALSE(s.contains(addr("0.0.0.1")));
  EXPECT_TRUE(s.contains(addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
  ASSERT_TRUE(parseCidr("::/0", &n));
  EXPECT_TRUE(s.contains(n));
  IpSet empty;
  empty.finish();
  EXPECT_FALSE(empty.contains(addr("10.0.0.1")));
  EXPECT_FALSE(s.add("10.0.0.0/99"));
}

class TempFile {
 public:
  explicit TempFile(const std::string& body) {
    char tmpl[] = "/tmp/mailgate_ipset_XXXXXX";
    const int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    ::close(fd);
    path_ = tmpl;
    std::ofstream(path_) << body;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(PolicyIpSet, FileWithCommentsAndBlankLines) {
  TempFile f(
      "# blocked networks\n"
      "\n"
      "192.0.2.0/24   # a comment after the entry\n"
      "  \t2001:db8::/32\r\n"
      "   # indented comment\n"
      "198.51.100.1");  // no final newline
  IpSet s;
  std::string err;
  ASSERT_TRUE(s.addFile(f.path(), &err)) << err;
  s.finish();
  EXPECT_TRUE(s.contains(addr("192.0.2.77")));
  EXPECT_TRUE(s.contains(addr("2001:db8:ffff::1")));
  EXPECT_TRUE(s.contains(addr("198.51.100.1")));
  EXPECT_FALSE(s.contains(addr("198.51.100.2")));
  EXPECT_EQ(s.size(), 3u);
}

TEST(PolicyIpSet, FileBadLineAndUnreadableFile) {
  TempFile f("10.0.0.0/8\n# fine\n\n10.300.0.0/16\n192.0.2.0/24\n");
  IpSet s;
  std::string err;
  EXPECT_FALSE(s.addFile(f.path(), &err));
  EXPECT_EQ(err.rfind(f.path() + ":4: ", 0), 0u) << err;
  EXPECT_NE(err.find("10.300.0.0/16"), std::string::npos) << err;

  err.clear();
  EXPECT_FALSE(s.addFile("/nonexistent/mailgate/list.txt", &err));
  EXPECT_EQ(err.rfind("/nonexistent/mailgate/list.txt: ", 0), 0u) << err;
}

}  // namespace
}  // namespace mailgate::filters::policy
