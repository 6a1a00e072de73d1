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

filters::QuarantineEntry entryOf(const pqxx::row& r) {
  filters::QuarantineEntry e;
  e.id = r[0].as<std::string>();
  e.created_ms = r[1].as<int64_t>();
  e.reason = r[2].as<std::string>();
  e.filter = r[3].as<std::string>();
  e.ref = r[4].as<std::string>();
  e.mail_from = r[5].as<std::string>();
  e.rcpts = splitLines(r[6].as<std::string>());
  e.delivered = splitLines(r[7].as<std::string>());
  e.client_ip = r[8].as<std::string>();
  e.helo = r[9].as<std::string>();
  e.user = r[10].as<std::string>();
  e.listener = r[11].as<std::string>();
  e.session_id = r[12].as<std::string>();
  e.smtputf8 = r[13].as<bool>();
  e.body_8bit = r[14].as<bool>();
  e.size = r[15].as<uint64_t>();
  return e;
}

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
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::work tx(c);
    // A retry after a lost connection may find its own row committed: not an error.
    tx.exec_params(
        "INSERT INTO mailgate_quarantine (id, created, created_ms, reason, filter, ref, mail_from, rcpts, "
        "client_ip, "
        "helo, username, listener, session_id, smtputf8, body_8bit, size, message) VALUES ($1, "
        "to_timestamp($2::bigint / 1000.0), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
        "$16) "
        "ON CONFLICT (id) DO NOTHING",
        meta.id, meta.created_ms, meta.reason, meta.filter, meta.ref, meta.mail_from, joinLines(meta.rcpts),
        meta.client_ip, meta.helo, meta.user, meta.listener, meta.session_id, meta.smtputf8, meta.body_8bit,
        static_cast<int64_t>(meta.size), pqxx::binarystring(data));
    tx.commit();
  });
  if (!ok) return Error{"database: " + ok.error()};
  filters::quarantineStats().entries.fetch_add(1);
  return meta.id;
}

Result<std::vector<filters::QuarantineEntry>> PostgresQuarantineStore::list(
    const filters::QuarantineFilter& filter, size_t limit) {
  std::vector<filters::QuarantineEntry> out;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    out.clear();
    pqxx::nontransaction tx(c);
    const pqxx::result r = tx.exec_params(
        std::string("SELECT ") + kColumns +
            " FROM mailgate_quarantine WHERE ($1 = 0 OR created_ms < $1) AND ($2 = '' OR "
            "strpos(lower(mail_from), "
            "$2) > 0) AND ($3 = '' OR strpos(lower(rcpts), $3) > 0) ORDER BY id DESC LIMIT $4",
        filter.before_ms, lowerAscii(filter.from), lowerAscii(filter.rcpt), static_cast<int64_t>(limit));
    for (const auto& row : r) out.push_back(entryOf(row));
  });
  if (!ok) return Error{"database: " + ok.error()};
  return out;
}

Result<filters::QuarantineEntry> PostgresQuarantineStore::get(
    const std::string& id, std::shared_ptr<const filters::MessageBody>* body) {
  if (!filters::validQuarantineId(id)) return Error{"not found"};
  std::optional<filters::QuarantineEntry> e;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::nontransaction tx(c);
    const pqxx::result r = tx.exec_params(std::string("SELECT ") + kColumns + (body ? ", message" : "") +
                                              " FROM mailgate_quarantine WHERE id = $1",
                                          id);
    if (r.empty()) return;
    e = entryOf(r[0]);
    if (body) {
      const pqxx::binarystring b(r[0][16]);
      *body = std::make_shared<MemoryBody>(b.str());
    }
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (!e) return Error{"not found"};
  return *e;
}

Result<bool> PostgresQuarantineStore::remove(const std::string& id) {
  bool removed = false;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::work tx(c);
    removed = tx.exec_params("DELETE FROM mailgate_quarantine WHERE id = $1", id).affected_rows() > 0;
    tx.commit();
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (removed) filters::quarantineStats().entries.fetch_sub(1);
  return removed;
}

Result<size_t> PostgresQuarantineStore::expire(int64_t cutoff_ms) {
  size_t n = 0;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::work tx(c);
    n = tx.exec_params(
              "DELETE FROM mailgate_quarantine WHERE created_ms < $1 AND (releasing_until IS NULL OR "
              "releasing_until < now())",
              cutoff_ms)
            .affected_rows();
    tx.commit();
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (n) filters::quarantineStats().expired.fetch_add(n);
  if (auto c = count()) filters::quarantineStats().entries.store(static_cast<int64_t>(c.value()));
  return n;
}

Result<size_t> PostgresQuarantineStore::count() {
  size_t n = 0;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::nontransaction tx(c);
    n = tx.exec("SELECT count(*) FROM mailgate_quarantine")[0][0].as<size_t>();
  });
  if (!ok) return Error{"database: " + ok.error()};
  return n;
}

filters::QuarantineStore::Claim PostgresQuarantineStore::claim(const std::string& id) {
  if (!filters::validQuarantineId(id)) return Claim::kNotFound;
  Claim claim = Claim::kBusy;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::work tx(c);
    // A release that never ended (its gateway died) lets go after 15 minutes.
    const pqxx::result r = tx.exec_params(
        "UPDATE mailgate_quarantine SET releasing_until = now() + interval '15 minutes' WHERE id = $1 AND "
        "(releasing_until IS NULL OR releasing_until < now()) RETURNING id",
        id);
    if (!r.empty()) {
      claim = Claim::kClaimed;
    } else {
      claim = tx.exec_params("SELECT 1 FROM mailgate_quarantine WHERE id = $1", id).empty() ? Claim::kNotFound
                                                                                            : Claim::kBusy;
    }
    tx.commit();
  });
  return ok ? claim : Claim::kError;
}

void PostgresQuarantineStore::unclaim(const std::string& id) {
  (void)pool_->run([&](pqxx::connection_base& c) {
    pqxx::work tx(c);
    tx.exec_params("UPDATE mailgate_quarantine SET releasing_until = NULL WHERE id = $1", id);
    tx.commit();
  });
}

Result<bool> PostgresQuarantineStore::setDelivered(const std::string& id,
                                                   const std::vector<std::string>& delivered) {
  bool found = false;
  auto ok = pool_->run([&](pqxx::connection_base& c) {
    pqxx::work tx(c);
    found = tx.exec_params("UPDATE mailgate_quarantine SET delivered = $2 WHERE id = $1", id,
                           joinLines(delivered))
                .affected_rows() > 0;
    tx.commit();
  });
  if (!ok) return Error{"database: " + ok.error()};
  if (!found) return Error{"not found"};
  return true;
}

}  // namespace mailgate::auth
