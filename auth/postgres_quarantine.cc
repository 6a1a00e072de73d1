#include "auth/postgres_quarantine.h"

#include <algorithm>

#include "auth/postgres_pool.h"

namespace mailgate::auth {

namespace {
constexpr const char* kColumns =
    "id, created_ms, reason, filter, ref, mail_from, rcpts, delivered, client_ip, helo, username, listener, "
    "session_id, smtputf8, body_8bit, size";

std::string joinLines(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += '\n';
    out += s;
  }
  return out;
}

std::vector<std::string> splitLines(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t nl = s.find('\n', pos);
    out.push_back(s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos));
    pos = nl == std::string::npos ? s.size() : nl + 1;
  }
  return out;
}

// The statements run on libpq through pg::exec, with every result owned from the
// start: libpqxx 6 loses the result of a statement whose connection broke meanwhile
// (LeakSanitizer, a quarantine write while the primary stopped: test_cluster).
int64_t toInt(std::string_view v) {
  int64_t n = 0;
  const bool neg = !v.empty() && v[0] == '-';
  for (size_t i = neg ? 1 : 0; i < v.size() && v[i] >= '0' && v[i] <= '9'; i++) n = n * 10 + (v[i] - '0');
  return neg ? -n : n;
}

std::string str(const pg::Rows& r, int row, int col) { return std::string(r.text(row, col)); }

filters::QuarantineEntry entryOf(const pg::Rows& r, int row) {
  filters::QuarantineEntry e;
  e.id = str(r, row, 0);
  e.created_ms = toInt(r.text(row, 1));
  e.reason = str(r, row, 2);
  e.filter = str(r, row, 3);
  e.ref = str(r, row, 4);
  e.mail_from = str(r, row, 5);
  e.rcpts = splitLines(str(r, row, 6));
  e.delivered = splitLines(str(r, row, 7));
  e.client_ip = str(r, row, 8);
  e.helo = str(r, row, 9);
  e.user = str(r, row, 10);
  e.listener = str(r, row, 11);
  e.session_id = str(r, row, 12);
  e.smtputf8 = r.text(row, 13) == "t";
  e.body_8bit = r.text(row, 14) == "t";
  e.size = static_cast<uint64_t>(toInt(r.text(row, 15)));
  return e;
}

const char* boolText(bool b) { return b ? "true" : "false"; }

// The message of one entry, read from the database whole.
class MemoryBody final : public filters::MessageBody {
 public:
  explicit MemoryBody(std::string data) : data_(std::move(data)) {}
  uint64_t size() const override { return data_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    out->clear();
    if (off < data_.size()) out->assign(data_, static_cast<size_t>(off), n);
    return true;
  }

 private:
  std::string data_;
};

std::string lowerAscii(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}
}  // namespace

PostgresQuarantineStore::PostgresQuarantineStore(std::unique_ptr<pg::Pool> pool) : pool_(std::move(pool)) {}
PostgresQuarantineStore::~PostgresQuarantineStore() = default;

Result<std::shared_ptr<PostgresQuarantineStore>> PostgresQuarantineStore::create(
    const conf::DirectoryConfig& cfg) {
  if (cfg.driver != "postgres") return Error{"store postgres needs directory.driver postgres"};
  // A message may take a while to write: the statement timeout is at least a minute.
  const conf::Duration timeout = std::max<conf::Duration>(cfg.postgres.timeout, std::chrono::seconds(60));
  auto pool = std::make_unique<pg::Pool>(pg::withConnectTimeout(cfg.postgres.conninfo, cfg.postgres.timeout),
                                         2, timeout, nullptr);
  return std::shared_ptr<PostgresQuarantineStore>(new PostgresQuarantineStore(std::move(pool)));
}

Result<std::string> PostgresQuarantineStore::put(filters::QuarantineEntry meta,
                                                 const filters::MessageBody& body) {
  if (meta.created_ms == 0) meta.created_ms = filters::wallMs();
  meta.id = filters::newQuarantineId(meta.created_ms);
  meta.size = body.size();
  std::string data, chunk;
  data.reserve(static_cast<size_t>(body.size()));
  for (uint64_t off = 0; off < body.size();) {
    if (!body.read(off, 64 * 1024, &chunk) || chunk.empty()) return Error{"cannot read the message"};
    data += chunk;
    off += chunk.size();
  }
  auto ok = pool_->run([&](pg::Connection& c) {
    pg::Transaction tx(c);
    // A retry after a lost connection may find its own row committed: not an error.
    pg::exec(
        c,
        "INSERT INTO mailgate_quarantine (id, created, created_ms, reason, filter, ref, mail_from, rcpts, "
        "client_ip, "
        "helo, username, listener, session_id, smtputf8, body_8bit, size, message) VALUES ($1, "
        "to_timestamp($2::bigint / 1000.0), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
        "$16) "
        "ON CONFLICT (id) DO NOTHING",
        {meta.id, std::to_string(meta.created_ms), meta.reason, meta.filter, meta.ref, meta.mail_from,
         joinLines(meta.rcpts), meta.client_ip, meta.helo, meta.user, meta.listener, meta.session_id,
         boolText(meta.smtputf8), boolText(meta.body_8bit), std::to_string(meta.size),
         pg::Value(data, true)});
    tx.commit();
  });
  if (!ok) return Error{"database: " + ok.error()};
  filters::quarantineStats().entries.fetch_add(1);
  return meta.id;
}

Result<std::vector<filters::QuarantineEntry>> PostgresQuarantineStore::list(
    const filters::QuarantineFilter& filter, size_t limit) {
  std::vector<filters::QuarantineEntry> out;
  auto ok = pool_->run([&](pg::Connection& c) {
    out.clear();
    const pg::Rows r =
        pg::exec(c,
                 std::string("SELECT ") + kColumns +
                     " FROM mailgate_quarantine WHERE ($1 = 0 OR created_ms < $1) AND ($2 = '' OR "
                     "strpos(lower(mail_from), "
                     "$2) > 0) AND ($3 = '' OR strpos(lower(rcpts), $3) > 0) ORDER BY id DESC LIMIT $4",
                 {std::to_string(filter.before_ms), lowerAscii(filter.from), lowerAscii(filter.rcpt),
                  std::to_string(limit)});
    for (int row = 0; row < r.rows(); row++) out.push_back(entryOf(r, row));
  });
  if (!ok) return Error{"database: " + ok.error()};
  return out;
}

Result<filters::QuarantineEntry> PostgresQuarantineStore::get(
    const std::string& id, std::shared_ptr<const filters::MessageBody>* body) {
  if (!filters::validQuarantineId(id)) return Error{"not found"};
  std::optional<filters::QuarantineEntry> e;
  auto ok = pool_->run([&](pg::Connection& c) {
    const pg::Rows r = pg::exec(c,
                                std::string("SELECT ") + kColumns + (body ? ", message" : "") +
                                    " FROM mailgate_quarantine WHERE id = $1",
                                {id});
    if (r.empty()) return;
    e = entryOf(r, 0);
    if (body) *body = std::make_shared<MemoryBody>(pg::bytea(r.text(0, 16)));
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (!e) return Error{"not found"};
  return *e;
}

Result<bool> PostgresQuarantineStore::remove(const std::string& id) {
  bool removed = false;
  auto ok = pool_->run([&](pg::Connection& c) {
    removed = pg::exec(c, "DELETE FROM mailgate_quarantine WHERE id = $1", {id}).affected() > 0;
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (removed) filters::quarantineStats().entries.fetch_sub(1);
  return removed;
}

Result<size_t> PostgresQuarantineStore::expire(int64_t cutoff_ms) {
  size_t n = 0;
  auto ok = pool_->run([&](pg::Connection& c) {
    n = pg::exec(c,
                 "DELETE FROM mailgate_quarantine WHERE created_ms < $1 AND (releasing_until IS NULL OR "
                 "releasing_until < now())",
                 {std::to_string(cutoff_ms)})
            .affected();
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (n) filters::quarantineStats().expired.fetch_add(n);
  if (auto c = count()) filters::quarantineStats().entries.store(static_cast<int64_t>(c.value()));
  return n;
}

Result<size_t> PostgresQuarantineStore::count() {
  size_t n = 0;
  auto ok = pool_->run([&](pg::Connection& c) {
    n = static_cast<size_t>(toInt(pg::exec(c, "SELECT count(*) FROM mailgate_quarantine").text(0, 0)));
  });
  if (!ok) return Error{"database: " + ok.error()};
  return n;
}

filters::QuarantineStore::Claim PostgresQuarantineStore::claim(const std::string& id) {
  if (!filters::validQuarantineId(id)) return Claim::kNotFound;
  Claim claim = Claim::kBusy;
  auto ok = pool_->run([&](pg::Connection& c) {
    pg::Transaction tx(c);
    // A release that never ended (its gateway died) lets go after 15 minutes.
    const pg::Rows r = pg::exec(
        c,
        "UPDATE mailgate_quarantine SET releasing_until = now() + interval '15 minutes' WHERE id = $1 AND "
        "(releasing_until IS NULL OR releasing_until < now()) RETURNING id",
        {id});
    if (!r.empty()) {
      claim = Claim::kClaimed;
    } else {
      claim = pg::exec(c, "SELECT 1 FROM mailgate_quarantine WHERE id = $1", {id}).empty() ? Claim::kNotFound
                                                                                           : Claim::kBusy;
    }
    tx.commit();
  });
  return ok ? claim : Claim::kError;
}

void PostgresQuarantineStore::unclaim(const std::string& id) {
  (void)pool_->run([&](pg::Connection& c) {
    pg::exec(c, "UPDATE mailgate_quarantine SET releasing_until = NULL WHERE id = $1", {id});
  });
}

Result<bool> PostgresQuarantineStore::setDelivered(const std::string& id,
                                                   const std::vector<std::string>& delivered) {
  bool found = false;
  auto ok = pool_->run([&](pg::Connection& c) {
    found =
        pg::exec(c, "UPDATE mailgate_quarantine SET delivered = $2 WHERE id = $1", {id, joinLines(delivered)})
            .affected() > 0;
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (!found) return Error{"not found"};
  return true;
}

}  // namespace mailgate::auth
