#include "auth/postgres_pool.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

namespace mailgate::auth::pg {
namespace {

TEST(PostgresPool, TargetOfConninfo) {
  EXPECT_EQ(targetOf("host=a,b port=1,2 dbname=mail target_session_attrs=read-write"), Target::kReadWrite);
  EXPECT_EQ(targetOf("host=a target_session_attrs = 'primary'"), Target::kPrimary);
  EXPECT_EQ(targetOf("postgresql://a:1,b:2/mail?target_session_attrs=read-write"), Target::kReadWrite);
  EXPECT_EQ(targetOf("host=a,b target_session_attrs=any"), Target::kAny);
  EXPECT_EQ(targetOf("host=a dbname=mail"), Target::kAny);
  EXPECT_EQ(targetOf("host=a options='-c target_session_attrs=read-write'"), Target::kAny);
  EXPECT_EQ(targetOf("host='unterminated"), Target::kAny);
}

TEST(PostgresPool, ReconnectReasons) {
  EXPECT_TRUE(reconnectReason(pqxx::broken_connection("server closed the connection unexpectedly")));
  EXPECT_TRUE(reconnectReason(pqxx::sql_error("cannot execute INSERT in a read-only transaction", "INSERT", "25006")));
  EXPECT_TRUE(reconnectReason(pqxx::sql_error("terminating connection due to administrator command", "", "57P01")));
  EXPECT_TRUE(reconnectReason(pqxx::sql_error("the database system is starting up", "", "57P03")));
  EXPECT_TRUE(reconnectReason(pqxx::sql_error("connection failure", "", "08006")));
  EXPECT_FALSE(reconnectReason(pqxx::sql_error("duplicate key", "INSERT", "23505")));
  EXPECT_FALSE(reconnectReason(pqxx::sql_error("canceling statement due to statement timeout", "", "57014")));
  EXPECT_FALSE(reconnectReason(pqxx::sql_error("syntax error", "SELEC", "42601")));
  EXPECT_FALSE(reconnectReason(std::runtime_error("cannot read the message")));
}

}  // namespace
}  // namespace mailgate::auth::pg
