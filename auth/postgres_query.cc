#include "auth/postgres_query.h"

#include <algorithm>
#include <utility>

#include "gateway/core/ascii.h"

namespace mailgate::auth::pg {
namespace {

struct ParamName {
  std::string_view name;
  Param param;
};
constexpr ParamName kParams[] = {
    {"user", Param::kUser},     {"address", Param::kAddress},    {"local_part", Param::kLocalPart},
    {"domain", Param::kDomain}, {"client_ip", Param::kClientIp}, {"protocol", Param::kProtocol},
};

}  // namespace

Result<CompiledQuery> compileQuery(std::string_view text, std::string name, const std::string& what) {
  CompiledQuery q;
  q.name = std::move(name);
  std::string& out = q.sql;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] != '%' || i + 1 >= text.size() || text[i + 1] != '{') {
      out += text[i++];
      continue;
    }
    const std::size_t close = text.find('}', i + 2);
    if (close == std::string_view::npos) return Error{what + ": unterminated %{ parameter"};
    const std::string_view pname = text.substr(i + 2, close - i - 2);
    const ParamName* found = nullptr;
    for (const ParamName& p : kParams)
      if (p.name == pname) found = &p;
    if (!found) {
      return Error{what + ": unknown parameter %{" + std::string(pname.substr(0, 40)) +
                   "} (user, address, local_part, domain, client_ip, protocol)"};
    }
    auto it = std::find(q.params.begin(), q.params.end(), found->param);
    std::size_t index = static_cast<std::size_t>(it - q.params.begin());
    if (it == q.params.end()) q.params.push_back(found->param);
    out += '$';
    out += std::to_string(index + 1);
    i = close + 1;
  }
  return q;
}

std::vector<std::string> bindParams(const CompiledQuery& q, const ParamValues& v) {
  const std::string u = ascii::lower(v.user);
  const std::string a = v.address.empty() ? u : ascii::lower(v.address);
  const std::size_t at = a.rfind('@');
  std::vector<std::string> values;
  values.reserve(q.params.size());
  for (Param p : q.params) {
    switch (p) {
      case Param::kUser:
        values.push_back(u);
        break;
      case Param::kAddress:
        values.push_back(a);
        break;
      case Param::kLocalPart:
        values.push_back(at == std::string::npos ? a : a.substr(0, at));
        break;
      case Param::kDomain:
        values.push_back(at == std::string::npos ? std::string() : a.substr(at + 1));
        break;
      case Param::kClientIp:
        values.push_back(v.facts ? v.facts->client_ip : std::string());
        break;
      case Param::kProtocol:
        values.push_back(v.facts ? v.facts->protocol : std::string());
        break;
    }
  }
  return values;
}

}  // namespace mailgate::auth::pg
