// The directory-fed routing map: per-mailbox, per-domain and default entries,
// host[:port] nodes, node states, and fallback to routing.static.
#include <gtest/gtest.h>

#include "routing/router.h"

namespace mailgate::routing {
namespace {

std::shared_ptr<conf::Config> config() {
  auto c = std::make_shared<conf::Config>();
  for (const char* n : {"s1", "s2", "s3"}) {
    conf::BackendConfig b;
    b.name = n;
    b.host = "127.0.0.1";
    b.ports.imap = 1143;
    c->backends.push_back(b);
  }
  c->routing.static_routes.push_back({"example.org", "s1", "s2"});
  c->routing.static_routes.push_back({"*", "s3", ""});
  return c;
}

TEST(RouterTable, StaticWithoutTable) {
  Router r(config());
  EXPECT_EQ(r.route("a@example.org").primary->config->name, "s1");
  EXPECT_EQ(r.route("a@other.org").primary->config->name, "s3");
}

TEST(RouterTable, MailboxBeatsDomainBeatsDefault) {
  Router r(config());
  auto t = std::make_shared<RouteTable>();
  t->entries.push_back({"*", "s1", ""});
  t->entries.push_back({"Example.ORG", "s2", "s1"});
  t->entries.push_back({"boss@example.org", "s3", ""});
  r.setTable(t);
  EXPECT_EQ(r.route("boss@EXAMPLE.org").primary->config->name, "s3");
  Route d = r.route("x@example.org");
  EXPECT_EQ(d.primary->config->name, "s2");
  ASSERT_NE(d.secondary, nullptr);
  EXPECT_EQ(d.secondary->config->name, "s1");
  EXPECT_EQ(r.route("x@elsewhere.net").primary->config->name, "s1");
  r.setTable(nullptr);
  EXPECT_EQ(r.route("boss@example.org").primary->config->name, "s1");
}

TEST(RouterTable, MapChangedAtAndSameContent) {
  Router r(config());
  EXPECT_EQ(r.mapChangedAt(), std::chrono::steady_clock::time_point{});
  auto t = std::make_shared<RouteTable>();
  t->entries.push_back({"example.org", "s2", "s1"});
  t->node_states.emplace_back("s1", "drain");
  t->changed_at = std::chrono::steady_clock::time_point{} + std::chrono::seconds(7);
  r.setTable(t);
  EXPECT_EQ(r.mapChangedAt(), t->changed_at);
  RouteTable same = *t;
  same.changed_at = {};
  EXPECT_TRUE(t->sameContent(same));
  RouteTable other = same;
  other.entries[0].secondary.clear();
  EXPECT_FALSE(t->sameContent(other));
  other = same;
  other.node_states[0].second = "active";
  EXPECT_FALSE(t->sameContent(other));
  other = same;
  other.entries.push_back({"*", "s3", ""});
  EXPECT_FALSE(t->sameContent(other));
  r.setTable(nullptr);
  EXPECT_EQ(r.mapChangedAt(), std::chrono::steady_clock::time_point{});
}

TEST(RouterTable, HostPortNodesAreAdHocBackends) {
  Router r(config());
  auto t = std::make_shared<RouteTable>();
  t->entries.push_back({"legacy.ru", "storage-01.domain.ru", "10.0.0.2:10143"});
  r.setTable(t);
  Route x = r.route("u@legacy.ru");
  ASSERT_NE(x.primary, nullptr);
  EXPECT_EQ(x.primary->config->host, "storage-01.domain.ru");
  EXPECT_EQ(x.primary->config->ports.imap, 143);
  EXPECT_EQ(x.primary->config->ports.pop3, 110);
  ASSERT_NE(x.secondary, nullptr);
  EXPECT_EQ(x.secondary->config->host, "10.0.0.2");
  EXPECT_EQ(x.secondary->config->ports.imap, 10143);
  // The same node resolves to the same backend object.
  EXPECT_EQ(r.route("v@legacy.ru").primary, x.primary);
  EXPECT_EQ(r.resolve("[::1]:993")->config->host, "::1");
  EXPECT_EQ(r.resolve("host:0"), nullptr);
  EXPECT_EQ(r.resolve("host:99999"), nullptr);
  EXPECT_EQ(r.resolve(""), nullptr);
}

TEST(RouterTable, NodeStates) {
  Router r(config());
  auto t = std::make_shared<RouteTable>();
  t->node_states.push_back({"s1", "drain"});
  t->node_states.push_back({"s2", "down"});
  r.setTable(t);
  EXPECT_FALSE(r.find("s1")->acceptsSessions());
  EXPECT_FALSE(r.find("s2")->acceptsSessions());
  EXPECT_TRUE(r.find("s3")->acceptsSessions());
  r.setTable(std::make_shared<RouteTable>());  // no longer listed: active again
  EXPECT_TRUE(r.find("s1")->acceptsSessions());
  EXPECT_TRUE(r.find("s2")->acceptsSessions());
}

}  // namespace
}  // namespace mailgate::routing
