#include "auth/postgres_pool.h"

#include <algorithm>
#include <utility>

namespace mailgate::auth::pg {
namespace {

std::string lowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

struct ParamName {
  std::string_view name;
  Param param;
};
constexpr ParamName kParams[] = {
    {"user", Param::kUser},          {"local_part", Param::kLocalPart}, {"domain", Param::kDomain},
    {"client_ip", Param::kClientIp}, {"protocol", Param::kProtocol},
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
                   "} (user, local_part, domain, client_ip, protocol)"};
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

std::vector<std::string> bindParams(const CompiledQuery& q, std::string_view user, const AuthContext* ctx) {
  const std::string u = lowerAscii(user);
  const std::size_t at = u.rfind('@');
  std::vector<std::string> values;
  values.reserve(q.params.size());
  for (Param p : q.params) {
    switch (p) {
      case Param::kUser:
        values.push_back(u);
        break;
      case Param::kLocalPart:
        values.push_back(at == std::string::npos ? u : u.substr(0, at));
        break;
      case Param::kDomain:
        values.push_back(at == std::string::npos ? std::string() : u.substr(at + 1));
        break;
      case Param::kClientIp:
        values.push_back(ctx ? ctx->client_ip : std::string());
        break;
      case Param::kProtocol:
        values.push_back(ctx ? ctx->protocol : std::string());
        break;
    }
  }
  return values;
}

std::string withConnectTimeout(const std::string& conninfo, conf::Duration timeout) {
  if (conninfo.find("connect_timeout") != std::string::npos) return conninfo;
  const long long secs = std::max<long long>(2, (timeout.count() + 999) / 1000);
  const std::string opt = "connect_timeout=" + std::to_string(secs);
  if (conninfo.rfind("postgresql://", 0) == 0 || conninfo.rfind("postgres://", 0) == 0)
    return conninfo + (conninfo.find('?') == std::string::npos ? "?" : "&") + opt;
  return conninfo.empty() ? opt : conninfo + " " + opt;
}

std::unique_ptr<pqxx::connection> connect(const std::string& conninfo, conf::Duration statement_timeout) {
  auto c = std::make_unique<pqxx::connection>(conninfo);
  {
    pqxx::nontransaction tx(*c);
    tx.exec("SET statement_timeout = " + std::to_string(statement_timeout.count()) +
            "; SET application_name = 'mailgate'");
  }
  return c;
}

std::string describe(const std::exception& e) {
  std::string s = e.what();
  const std::size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  if (s.size() > 300) s.resize(300);
  return s;
}

void Backoff::failed(Clock::time_point now) {
  next_ = now + delay_;
  delay_ = std::min(delay_ * 2, kMax);
}

Pool::Pool(std::string conninfo, std::size_t size, conf::Duration timeout,
           std::function<void(pqxx::connection&)> on_connect)
    : conninfo_(std::move(conninfo)), timeout_(timeout), on_connect_(std::move(on_connect)),
      slots_(std::max<std::size_t>(1, size)) {}

Pool::~Pool() = default;

Result<bool> Pool::run(const std::function<void(pqxx::connection&)>& fn) {
  std::unique_lock<std::mutex> lock(mu_);
  std::size_t idx = slots_.size();
  auto pick = [&] {
    // Prefer a slot that already has a connection.
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].busy && slots_[i].conn) return idx = i, true;
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].busy) return idx = i, true;
    return false;
  };
  if (!cv_.wait_for(lock, timeout_, pick)) {
    ++failures_;
    return Error{"no free database connection within " + std::to_string(timeout_.count()) + "ms"};
  }
  slots_[idx].busy = true;
  std::unique_ptr<pqxx::connection> conn = std::move(slots_[idx].conn);
  lock.unlock();

  auto finish = [&](std::unique_ptr<pqxx::connection> c, bool failed) {
    std::lock_guard<std::mutex> g(mu_);
    slots_[idx].conn = std::move(c);
    slots_[idx].busy = false;
    if (failed) ++failures_;
    cv_.notify_one();
  };

  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = conn != nullptr;
    if (!conn) {
      bool ready = false;
      {
        std::lock_guard<std::mutex> g(mu_);
        ready = backoff_.ready(Clock::now());
      }
      if (!ready) {
        finish(nullptr, true);
        return Error{"database unreachable (waiting to reconnect)"};
      }
      try {
        conn = connect(conninfo_, timeout_);
        if (on_connect_) on_connect_(*conn);
        std::lock_guard<std::mutex> g(mu_);
        backoff_.succeeded();
        ++connects_;
      } catch (const std::exception& e) {
        conn.reset();
        {
          std::lock_guard<std::mutex> g(mu_);
          backoff_.failed(Clock::now());
        }
        finish(nullptr, true);
        return Error{"connect: " + describe(e)};
      }
    }
    try {
      fn(*conn);
      finish(std::move(conn), false);
      return true;
    } catch (const pqxx::broken_connection& e) {
      conn.reset();
      if (reused && attempt == 0) continue;  // the server went away since last use: one fresh try
      finish(nullptr, true);
      return Error{"connection lost: " + describe(e)};
    } catch (const std::exception& e) {
      conn.reset();
      finish(nullptr, true);
      return Error{describe(e)};
    }
  }
  finish(nullptr, true);
  return Error{"connection lost"};
}

uint64_t Pool::connects() const {
  std::lock_guard<std::mutex> g(mu_);
  return connects_;
}

uint64_t Pool::failures() const {
  std::lock_guard<std::mutex> g(mu_);
  return failures_;
}

}  // namespace mailgate::auth::pg
