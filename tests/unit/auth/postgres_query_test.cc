#include "auth/postgres_query.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mailgate::auth::pg {
namespace {

using Strings = std::vector<std::string>;

CompiledQuery compiled(const std::string& text) {
  auto q = compileQuery(text, "s", "directory.postgres.queries.x");
  EXPECT_TRUE(q.ok()) << q.error();
  return q.ok() ? *q : CompiledQuery{};
}

TEST(PostgresQuery, NamesBecomePositionalParameters) {
  CompiledQuery q = compiled("SELECT 1 FROM t WHERE a = %{user} AND b = %{domain} OR c = %{user}");
  EXPECT_EQ(q.sql, "SELECT 1 FROM t WHERE a = $1 AND b = $2 OR c = $1");
  EXPECT_EQ(q.params, (std::vector<Param>{Param::kUser, Param::kDomain}));
  EXPECT_EQ(q.name, "s");
}

TEST(PostgresQuery, PercentWithoutBraceIsKept) {
  EXPECT_EQ(compiled("SELECT 1 WHERE x LIKE '%a%' AND y = %{address}").sql,
            "SELECT 1 WHERE x LIKE '%a%' AND y = $1");
}

TEST(PostgresQuery, UnknownOrUnterminatedParameterIsAnError) {
  auto q = compileQuery("SELECT %{usr}", "s", "directory.postgres.queries.sender");
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error(),
            "directory.postgres.queries.sender: unknown parameter %{usr} "
            "(user, address, local_part, domain, client_ip, protocol)");
  auto u = compileQuery("SELECT %{user", "s", "w");
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.error(), "w: unterminated %{ parameter");
}

TEST(PostgresQuery, LoginBindingSplitsTheUser) {
  CompiledQuery q = compiled("%{protocol} %{client_ip} %{domain} %{local_part} %{address} %{user}");
  filters::SessionFacts ctx;
  ctx.client_ip = "192.0.2.1";
  ctx.protocol = "imap";
  EXPECT_EQ(bindParams(q, "Alice@Example.ORG", &ctx),
            (Strings{"imap", "192.0.2.1", "example.org", "alice", "alice@example.org", "alice@example.org"}));
  EXPECT_EQ(bindParams(q, "bare", nullptr), (Strings{"", "", "", "bare", "bare", "bare"}));
  EXPECT_EQ(bindParams(q, "a@b@c.example", nullptr),
            (Strings{"", "", "c.example", "a@b", "a@b@c.example", "a@b@c.example"}));
}

TEST(PostgresQuery, SenderBindingSplitsTheAddressNotTheLogin) {
  CompiledQuery q = compiled("%{user} %{address} %{local_part} %{domain}");
  EXPECT_EQ(bindParams(q, ParamValues{"Alice@Example.org", "Postmaster@Example.NET", nullptr}),
            (Strings{"alice@example.org", "postmaster@example.net", "postmaster", "example.net"}));
}

}  // namespace
}  // namespace mailgate::auth::pg
