#pragma once
// The quarantine in PostgreSQL (hooks.quarantine.store: postgres, with the postgres
// directory): table mailgate_quarantine (auth/postgres_schema.cc, migration 4), one
// row per entry with the message in a bytea. put() returns once its transaction has
// committed: the entry is durable and every gateway of the cluster sees it. A
// release claims the row (releasing_until) so that two gateways never deliver it
// twice. The message is held in memory while it is written or read (a bytea is one
// value): fine up to the listeners' max_message_size.
#include <memory>
#include <string>

#include "conf/config.h"
#include "filters/quarantine.h"
#include "gateway/core/result.h"

namespace mailgate::auth {

namespace pg {
class Pool;
}

class PostgresQuarantineStore final : public filters::QuarantineStore {
 public:
  static Result<std::shared_ptr<PostgresQuarantineStore>> create(const conf::DirectoryConfig& cfg);
  ~PostgresQuarantineStore() override;
  std::string_view kind() const override { return "postgres"; }
  Result<std::string> put(filters::QuarantineEntry meta, const filters::MessageBody& body) override;
  Result<std::vector<filters::QuarantineEntry>> list(const filters::QuarantineFilter& filter,
                                                     size_t limit) override;
  Result<filters::QuarantineEntry> get(const std::string& id,
                                       std::shared_ptr<const filters::MessageBody>* body) override;
  Result<bool> remove(const std::string& id) override;
  Result<size_t> expire(int64_t cutoff_ms) override;
  Result<size_t> count() override;
  Claim claim(const std::string& id) override;
  void unclaim(const std::string& id) override;
  Result<bool> setDelivered(const std::string& id, const std::vector<std::string>& delivered) override;

 private:
  explicit PostgresQuarantineStore(std::unique_ptr<pg::Pool> pool);
  std::unique_ptr<pg::Pool> pool_;
};

}  // namespace mailgate::auth
