#pragma once
// Named query parameters of the postgres directory: %{name} in an operator's query
// becomes $n of a prepared statement, and the values are bound per call, never
// spliced into the SQL text. Pure (no libpqxx, no I/O): unit-tested on its own.
#include <string>
#include <string_view>
#include <vector>

#include "filters/session_facts.h"
#include "gateway/core/result.h"

namespace mailgate::auth::pg {

// The named parameters a query may use; each becomes $n of a prepared statement.
enum class Param { kUser, kAddress, kLocalPart, kDomain, kClientIp, kProtocol };

struct CompiledQuery {
  std::string name;           // prepared statement name
  std::string sql;            // with $1..$n
  std::vector<Param> params;  // params[i] is bound to $(i+1)
  bool empty() const { return sql.empty(); }
};

// Translates %{user} %{address} %{local_part} %{domain} %{client_ip} %{protocol}
// into $1..$n (a name used twice binds the same $n). A '%' not followed by '{' is
// kept as is. Errors name `what` (e.g. "directory.postgres.queries.password").
Result<CompiledQuery> compileQuery(std::string_view text, std::string name, const std::string& what);

// What one call binds. Every value is lower-cased (ASCII):
//   %{user}        user (the login; the looked-up address for recipient/domain)
//   %{address}     address, or user when address is empty
//   %{local_part}, %{domain}
//                  %{address} split at its last '@' (domain empty when there is none)
//   %{client_ip}, %{protocol}
//                  from facts (empty without them)
struct ParamValues {
  std::string_view user;
  std::string_view address;
  const filters::SessionFacts* facts = nullptr;
};

std::vector<std::string> bindParams(const CompiledQuery& q, const ParamValues& values);

// Login queries (password, route): %{address} = %{user}.
inline std::vector<std::string> bindParams(const CompiledQuery& q, std::string_view user,
                                           const filters::SessionFacts* facts) {
  return bindParams(q, ParamValues{user, {}, facts});
}

}  // namespace mailgate::auth::pg
