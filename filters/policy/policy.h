#pragma once
// The running policy: the `lists`, `geoip`, `limits` and `policies` sections compiled
// once per configuration (IP sets built, lists' files read, GeoIP databases opened,
// RE2 patterns compiled), and the filter that applies it to every session.
//
// At each stage a session passes, in this order:
//   connect  an exempt address skips every limit and ban; a banned address is refused;
//            the GeoIP facts (country, ASN) are filled in;
//   limits   the stage's counted events (connections at connect, messages at mail,
//            recipients at rcpt, bytes at data; auth failures are checked before
//            a login when their action refuses) are counted and checked;
//   rules    the stage's `policies`, in order: the first terminal action wins, accept
//            skips the rest, shadow rules log and count only.
// Auth failures and protocol errors are counted when the session reports them
// (Filter::onEvent); the per-user session limit is checked at a successful login.
//
// Counters and bans live in the process-wide PolicyState, so a reload keeps them.
// A dry run (--explain, --test-policy) reads counters and bans without changing them
// and records what it looked at in a Trace.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "conf/config.h"
#include "filters/filter.h"
#include "filters/policy/geoip.h"
#include "filters/policy/ip_set.h"
#include "filters/policy/policy_state.h"

namespace mailgate::filters::policy {

struct TraceLine {
  Stage stage = Stage::kConnect;
  std::string kind;    // "ban" | "geoip" | "limit" | "rule" | "exempt"
  std::string name;    // limit or rule name
  bool matched = false;
  std::string detail;  // what was compared, the count, the action
};
using Trace = std::vector<TraceLine>;

struct CompiledLimit;
struct CompiledRule;

// Per-rule counters for /metrics ("limit" or "rule", name, outcome); process-wide,
// so that they survive a reload.
struct RuleMetric {
  std::string kind, name, outcome;
  std::atomic<uint64_t> count{0};
};
void forEachRuleMetric(const std::function<void(const RuleMetric&)>& fn);

class Policy {
 public:
  ~Policy();
  // Compiles the policy sections. On a reload `running` is the policy in service: a
  // GeoIP database that fails to open keeps the running one (with a warning). Errors
  // name the file, line and column of the section at fault.
  static std::shared_ptr<const Policy> compile(const conf::Config& config, const Policy* running,
                                               std::vector<conf::ConfigError>* errors,
                                               std::vector<std::string>* warnings);

  const conf::Config& config() const { return *config_; }
  const GeoDb* countryDb() const { return country_.get(); }
  const GeoDb* asnDb() const { return asn_.get(); }
  bool exempt(const NetAddr& addr) const;
  bool neverBan(const NetAddr& addr) const;
  // The network a ban of this address covers (defaults.ipv4_prefix / ipv6_prefix).
  NetAddr banNet(const NetAddr& addr) const;
  BanParams banParams() const;
  const IpSet* list(const std::string& name) const;

 private:
  friend class PolicyFilter;
  Policy() = default;
  std::shared_ptr<const conf::Config> config_;
  std::vector<std::pair<std::string, std::unique_ptr<IpSet>>> net_lists_;
  std::vector<std::pair<std::string, std::vector<std::string>>> country_lists_;
  std::shared_ptr<const GeoDb> country_, asn_;
  std::vector<const IpSet*> exempt_, never_;
  std::vector<std::unique_ptr<CompiledLimit>> limits_;
  std::vector<std::unique_ptr<CompiledRule>> rules_;
  uint32_t stages_ = 0;  // stageBit mask of the stages with work
  bool needs_meta_ = false;  // a data rule looks at header fields or attachment names
};

class PolicyFilterFactory final : public FilterFactory {
 public:
  explicit PolicyFilterFactory(std::shared_ptr<const Policy> policy) : policy_(std::move(policy)) {}
  std::string_view name() const override { return "policy"; }
  std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const override;
  bool usesConnections() const override { return false; }
  const std::shared_ptr<const Policy>& policy() const { return policy_; }

 private:
  std::shared_ptr<const Policy> policy_;
};

// A dry-run filter for --explain / --test-policy: counters and bans are read, never
// changed; every check is recorded in *trace. Data-stage message facts are read on
// the calling thread.
std::unique_ptr<Filter> makeDryRunFilter(std::shared_ptr<const Policy> policy, const SessionFacts& facts,
                                         Trace* trace);

// Hash of a user name and password for distinct_credentials (never stored as text).
uint64_t credentialHash(std::string_view user, std::string_view password);

}  // namespace mailgate::filters::policy
