// GeoIP through libmaxminddb on small databases written here with Perl's
// MaxMind::DB::Writer: the flat (ip-location-db) and nested (GeoLite2) field layouts,
// numbers, absent addresses and fields, IPv6, several files in order, and broken files.
#include "filters/policy/geoip.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace mailgate::filters::policy {
namespace {

namespace fs = std::filesystem;

// make.pl OUT IP_VERSION NET KEY=VALUE[,KEY=VALUE...] ... ("a.b=v" makes a nested map).
constexpr const char* kWriter = R"PERL(
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;
my ($out, $ipver, @pairs) = @ARGV;
my %types = (country => 'map', autonomous_system_number => 'uint32', big => 'uint64',
             small => 'uint16', neg => 'int32', ratio => 'double');
my $tree = MaxMind::DB::Writer::Tree->new(
  ip_version => $ipver, record_size => 24, database_type => 'mailgate-test', languages => ['en'],
  description => { en => 'mailgate test' }, remove_reserved_networks => 0,
  map_key_type_callback => sub { $types{$_[0]} // 'utf8_string' });
while (@pairs) {
  my ($net, $kv) = splice(@pairs, 0, 2);
  my %rec;
  for my $item (split /,/, $kv) {
    my ($k, $v) = split /=/, $item, 2;
    if ($k =~ /^(\w+)\.(\w+)$/) { $rec{$1}{$2} = $v; } else { $rec{$k} = $v; }
  }
  $tree->insert_network($net, \%rec);
}
open my $fh, '>:raw', $out or die "$out: $!";
$tree->write_tree($fh);
close $fh or die "$out: $!";
)PERL";

class PolicyGeoip : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("perl -MMaxMind::DB::Writer::Tree -e1 >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "Perl's MaxMind::DB::Writer is missing (libmaxmind-db-writer-perl; scripts/deps.sh)";
    char tmpl[] = "/tmp/mailgate_geoip_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "make.pl") << kWriter;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Writes NAME.mmdb from (network, record) pairs; returns its path.
  std::string make(const std::string& name, int ip_version, const std::vector<std::string>& args) {
    const std::string out = (dir_ / (name + ".mmdb")).string();
    std::string cmd = "perl " + (dir_ / "make.pl").string() + " " + out + " " + std::to_string(ip_version);
    for (const std::string& a : args) cmd += " '" + a + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return out;
  }

  static NetAddr addr(const char* s) {
    NetAddr a;
    EXPECT_TRUE(parseAddr(s, &a)) << s;
    return a;
  }

  fs::path dir_;
};

TEST_F(PolicyGeoip, FlatCountryCode) {
  const std::string db = make("flat", 6, {"192.0.2.0/24", "country_code=DE", "2001:db8::/32", "country_code=FR",
                                          "198.51.100.0/24", "other=x"});
  std::string err;
  auto g = GeoDb::open({db}, "country_code", &err);
  ASSERT_NE(g, nullptr) << err;
  EXPECT_EQ(g->lookup(addr("192.0.2.1")), "DE");
  EXPECT_EQ(g->lookup(addr("192.0.2.255")), "DE");
  EXPECT_EQ(g->lookup(addr("::ffff:192.0.2.7")), "DE");
  EXPECT_EQ(g->lookup(addr("2001:db8:ffff::1")), "FR");
  EXPECT_EQ(g->lookup(addr("192.0.3.1")), "");        // absent from the db
  EXPECT_EQ(g->lookup(addr("2001:db9::1")), "");
  EXPECT_EQ(g->lookup(addr("198.51.100.1")), "");     // present, without the field
  EXPECT_EQ(g->lookup(NetAddr{}), "");
  EXPECT_EQ(g->lookupNumber(addr("192.0.2.1")), 0u);  // "DE" is not a number
  EXPECT_EQ(g->paths(), std::vector<std::string>{db});
}

TEST_F(PolicyGeoip, NestedIsoCode) {
  const std::string db = make("nested", 6, {"192.0.2.0/24", "country.iso_code=SE,country.name=Sweden",
                                            "2001:db8:1::/48", "country.iso_code=NO"});
  std::string err;
  auto g = GeoDb::open({db}, "country.iso_code", &err);
  ASSERT_NE(g, nullptr) << err;
  EXPECT_EQ(g->lookup(addr("192.0.2.9")), "SE");
  EXPECT_EQ(g->lookup(addr("2001:db8:1:2::3")), "NO");
  EXPECT_EQ(g->lookup(addr("2001:db8:2::3")), "");
  // The map itself is not a value; a path through a string finds nothing.
  auto whole = GeoDb::open({db}, "country", &err);
  ASSERT_NE(whole, nullptr) << err;
  EXPECT_EQ(whole->lookup(addr("192.0.2.9")), "");
  auto deep = GeoDb::open({db}, "country.iso_code.x", &err);
  ASSERT_NE(deep, nullptr) << err;
  EXPECT_EQ(deep->lookup(addr("192.0.2.9")), "");
  EXPECT_EQ(GeoDb::open({db}, "country..iso_code", &err), nullptr);
  EXPECT_NE(err.find("field"), std::string::npos) << err;
}

TEST_F(PolicyGeoip, AsnNumbers) {
  const std::string db = make("asn", 6,
                              {"192.0.2.0/24", "autonomous_system_number=64500,autonomous_system_organization=Example",
                               "2001:db8::/32", "autonomous_system_number=4200000000",
                               "198.51.100.0/24", "as_text=AS64501,small=443,big=18446744073709551615,neg=-5",
                               "203.0.113.0/24", "as_text=AS,small=0"});
  std::string err;
  auto g = GeoDb::open({db}, "autonomous_system_number", &err);
  ASSERT_NE(g, nullptr) << err;
  EXPECT_EQ(g->lookup(addr("192.0.2.1")), "64500");
  EXPECT_EQ(g->lookupNumber(addr("192.0.2.1")), 64500u);
  EXPECT_EQ(g->lookupNumber(addr("2001:db8::1")), 4200000000u);
  EXPECT_EQ(g->lookupNumber(addr("192.0.3.1")), 0u);
  auto text = GeoDb::open({db}, "as_text", &err);
  ASSERT_NE(text, nullptr) << err;
  EXPECT_EQ(text->lookup(addr("198.51.100.1")), "AS64501");
  EXPECT_EQ(text->lookupNumber(addr("198.51.100.1")), 64501u);
  EXPECT_EQ(text->lookupNumber(addr("203.0.113.1")), 0u);  // "AS" alone
  auto small = GeoDb::open({db}, "small", &err);
  ASSERT_NE(small, nullptr) << err;
  EXPECT_EQ(small->lookup(addr("198.51.100.1")), "443");
  EXPECT_EQ(small->lookupNumber(addr("198.51.100.1")), 443u);
  auto big = GeoDb::open({db}, "big", &err);
  ASSERT_NE(big, nullptr) << err;
  EXPECT_EQ(big->lookup(addr("198.51.100.1")), "18446744073709551615");
  EXPECT_EQ(big->lookupNumber(addr("198.51.100.1")), 0u);  // does not fit
  auto neg = GeoDb::open({db}, "neg", &err);
  ASSERT_NE(neg, nullptr) << err;
  EXPECT_EQ(neg->lookup(addr("198.51.100.1")), "-5");
  EXPECT_EQ(neg->lookupNumber(addr("198.51.100.1")), 0u);
}

TEST_F(PolicyGeoip, SeveralFilesInOrderAndIpv4OnlyFile) {
  const std::string v4 = make("v4", 4, {"192.0.2.0/24", "country_code=DE", "198.51.100.0/24", "other=y"});
  const std::string v6 = make("v6", 6, {"192.0.2.0/25", "country_code=XX", "198.51.100.0/24", "country_code=IT",
                                        "2001:db8::/32", "country_code=FR"});
  std::string err;
  auto g = GeoDb::open({v4, v6}, "country_code", &err);
  ASSERT_NE(g, nullptr) << err;
  EXPECT_EQ(g->lookup(addr("192.0.2.1")), "DE");      // the first file answers
  EXPECT_EQ(g->lookup(addr("198.51.100.1")), "IT");   // the first lacks the field: the next
  EXPECT_EQ(g->lookup(addr("2001:db8::1")), "FR");    // an IPv4-only file cannot answer IPv6
  EXPECT_EQ(g->lookup(addr("2001:db9::1")), "");
  auto only4 = GeoDb::open({v4}, "country_code", &err);
  ASSERT_NE(only4, nullptr) << err;
  EXPECT_EQ(only4->lookup(addr("2001:db8::1")), "");
  EXPECT_EQ(only4->lookup(addr("192.0.2.200")), "DE");
}

TEST_F(PolicyGeoip, CorruptOrMissingFile) {
  const std::string good = make("good", 6, {"192.0.2.0/24", "country_code=DE"});
  const std::string bad = (dir_ / "truncated.mmdb").string();
  {
    std::ifstream in(good, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_GT(bytes.size(), 100u);
    std::ofstream(bad, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  std::string err;
  EXPECT_EQ(GeoDb::open({good, bad}, "country_code", &err), nullptr);
  EXPECT_EQ(err.rfind(bad + ": ", 0), 0u) << err;
  EXPECT_GT(err.size(), bad.size() + 2);

  const std::string empty = (dir_ / "empty.mmdb").string();
  std::ofstream(empty).close();
  err.clear();
  EXPECT_EQ(GeoDb::open({empty}, "country_code", &err), nullptr);
  EXPECT_EQ(err.rfind(empty + ": ", 0), 0u) << err;

  const std::string missing = (dir_ / "missing.mmdb").string();
  err.clear();
  EXPECT_EQ(GeoDb::open({missing}, "country_code", &err), nullptr);
  EXPECT_EQ(err.rfind(missing + ": ", 0), 0u) << err;
  EXPECT_NE(err.find("No such file"), std::string::npos) << err;
}

}  // namespace
}  // namespace mailgate::filters::policy
