// Drives the postgres directory's prepared-statement path through its pool, for
// tests/integration/test_postgres_faults.py, which breaks the database connection
// while a query runs and, with a sanitizer build of this tool, asserts that
// LeakSanitizer finds nothing at exit.
//   pg_directory_fault CONNINFO
// One login per stdin line ("user password"); prints one line per answer:
// "<user> <verdict> <reason>", verdict ok|bad_password|unknown_user|tempfail.
// The password query sleeps %{user}'s number of seconds when the user is "sleep<N>".
#include <iostream>
#include <memory>
#include <string>

#include "auth/postgres_directory.h"
#include "conf/config.h"

namespace {

const char* verdictName(mailgate::auth::Verdict v) {
  switch (v) {
    case mailgate::auth::Verdict::kOk:
      return "ok";
    case mailgate::auth::Verdict::kBadPassword:
      return "bad_password";
    case mailgate::auth::Verdict::kUnknownUser:
      return "unknown_user";
    case mailgate::auth::Verdict::kTempFail:
      return "tempfail";
  }
  return "other";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: pg_directory_fault CONNINFO\n";
    return 2;
  }
  mailgate::conf::DirectoryConfig cfg;
  cfg.driver = "postgres";
  cfg.postgres.conninfo = argv[1];
  cfg.postgres.pool = 1;
  cfg.postgres.timeout = std::chrono::milliseconds(10000);
  cfg.postgres.queries.password =
      "SELECT NULL::text AS password, true AS active, %{user} AS user FROM pg_sleep("
      "CASE WHEN %{user} LIKE 'sleep%' THEN substr(%{user}, 6)::float8 ELSE 0 END)";
  auto dir = mailgate::auth::PostgresDirectory::create(cfg);
  if (!dir) {
    std::cerr << "create: " << dir.error() << "\n";
    return 2;
  }
  std::string user, password;
  while (std::cin >> user >> password) {
    const mailgate::auth::AuthResult r = (*dir)->authenticate(user, password);
    std::cout << user << " " << verdictName(r.verdict) << " " << r.reason << std::endl;
  }
  return 0;
}
