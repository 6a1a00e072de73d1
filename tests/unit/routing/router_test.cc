#include "routing/router.h"

#include <gtest/gtest.h>

#include <memory>

namespace mailgate::routing {
namespace {

conf::BackendConfig backend(const std::string& name, uint16_t imap = 143) {
  conf::BackendConfig b;
  b.name = name;
  b.host = "127.0.0.1";
  b.ports.imap = imap;
  return b;
}

std::shared_ptr<const conf::Config> makeConfig() {
  auto c = std::make_shared<conf::Config>();
  c->backends = {backend("storage-01"), backend("storage-02"), backend("storage-03")};
  c->routing.static_routes = {
      {"Example.ORG", "storage-01", "storage-02"},
      {"branch.example.net", "storage-02", ""},
      {"*", "storage-03", "storage-01"},
      {"example.org", "storage-03", ""},  // a later duplicate does not override
  };
  return c;
}

std::string name(const Backend* b) { return b ? b->config->name : "(null)"; }

TEST(Router, BuildsBackendsFromConfig) {
  Router r(makeConfig());
  ASSERT_EQ(r.backends().size(), 3u);
  EXPECT_EQ(name(r.find("storage-02")), "storage-02");
  EXPECT_EQ(r.find("storage-09"), nullptr);
  EXPECT_TRUE(r.find("storage-01")->up.load());  // optimistic at start
}

TEST(Router, DomainLookupIsCaseInsensitive) {
  Router r(makeConfig());
  for (const char* user : {"alice@example.org", "alice@EXAMPLE.org", "ALICE@Example.Org"}) {
    auto route = r.route(user);
    EXPECT_EQ(name(route.primary), "storage-01") << user;
    EXPECT_EQ(name(route.secondary), "storage-02") << user;
  }
  auto b = r.route("bob@Branch.Example.NET");
  EXPECT_EQ(name(b.primary), "storage-02");
  EXPECT_EQ(b.secondary, nullptr);
}

TEST(Router, DefaultRoute) {
  Router r(makeConfig());
  for (const char* user :
       {"alice", "alice@", "alice@unknown.org", "", "alice@example.org.evil", "a@b@example.net"}) {
    auto route = r.route(user);
    EXPECT_EQ(name(route.primary), "storage-03") << user;
    EXPECT_EQ(name(route.secondary), "storage-01") << user;
  }
  // The domain is what follows the last '@'.
  EXPECT_EQ(name(r.route("\"a@b\"@example.org").primary), "storage-01");
}

TEST(Router, NoDefaultGivesNullRoute) {
  auto c = std::make_shared<conf::Config>();
  c->backends = {backend("s1")};
  c->routing.static_routes = {{"example.org", "s1", ""}};
  Router r(c);
  EXPECT_EQ(name(r.route("x@example.org").primary), "s1");
  auto none = r.route("x@other.org");
  EXPECT_EQ(none.primary, nullptr);
  EXPECT_EQ(none.secondary, nullptr);
  EXPECT_EQ(r.route("x").primary, nullptr);
}

TEST(Router, EmptyConfig) {
  Router r(std::make_shared<conf::Config>());
  EXPECT_TRUE(r.backends().empty());
  EXPECT_EQ(r.route("a@b").primary, nullptr);
}

}  // namespace
}  // namespace mailgate::routing
