#include "filters/policy/policy.h"

#include <re2/re2.h>
#include <re2/set.h>

#include <unistd.h>

#include <algorithm>
#include <optional>
#include <map>
#include <mutex>

#include "filters/mime_meta.h"
#include "gateway/core/ascii.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"

namespace mailgate::filters::policy {

namespace {

log::RateLimit g_limit_log(20);
log::RateLimit g_shadow_log(20);

int64_t steadyUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string_view domainOf(std::string_view addr) {
  if (!addr.empty() && addr.front() == '<') addr.remove_prefix(1);
  if (!addr.empty() && addr.back() == '>') addr.remove_suffix(1);
  const size_t at = addr.rfind('@');
  return at == std::string_view::npos ? std::string_view{} : addr.substr(at + 1);
}

std::string_view stripPath(std::string_view p) {
  if (!p.empty() && p.front() == '<') p.remove_prefix(1);
  if (!p.empty() && p.back() == '>') p.remove_suffix(1);
  return p;
}

// --- metrics ---
std::mutex g_metrics_mu;
std::map<std::string, std::unique_ptr<RuleMetric>>& metrics() {
  static std::map<std::string, std::unique_ptr<RuleMetric>> m;
  return m;
}

RuleMetric* metric(const std::string& kind, const std::string& name, const std::string& outcome) {
  std::lock_guard<std::mutex> lock(g_metrics_mu);
  auto& slot = metrics()[kind + '\0' + name + '\0' + outcome];
  if (!slot) {
    slot = std::make_unique<RuleMetric>();
    slot->kind = kind;
    slot->name = name;
    slot->outcome = outcome;
  }
  return slot.get();
}

uint64_t fnv(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// One or many RE2 patterns; any match is a match.
struct ReMatcher {
  std::unique_ptr<RE2> one;
  std::unique_ptr<RE2::Set> set;
  bool empty() const { return !one && !set; }
  bool compile(const std::vector<std::string>& patterns, std::string* error) {
    if (patterns.empty()) return true;
    RE2::Options opt;
    opt.set_log_errors(false);
    if (patterns.size() == 1) {
      one = std::make_unique<RE2>(patterns[0], opt);
      if (!one->ok()) {
        *error = one->error();
        return false;
      }
      return true;
    }
    set = std::make_unique<RE2::Set>(opt, RE2::UNANCHORED);
    for (const auto& p : patterns)
      if (set->Add(p, error) < 0) return false;
    if (!set->Compile()) {
      *error = "the patterns do not compile together (out of memory)";
      return false;
    }
    return true;
  }
  bool match(std::string_view text) const {
    if (one) return RE2::PartialMatch(text, *one);
    if (set) return set->Match(text, nullptr);
    return false;
  }
};

const char* countName(conf::CountKind k) {
  switch (k) {
    case conf::CountKind::kConnections:
      return "connections";
    case conf::CountKind::kAuthFailures:
      return "auth_failures";
    case conf::CountKind::kErrors:
      return "errors";
    case conf::CountKind::kMessages:
      return "messages";
    case conf::CountKind::kRecipients:
      return "recipients";
    case conf::CountKind::kBytes:
      return "bytes";
  }
  return "?";
}

const char* limitActionName(conf::LimitAction a) {
  switch (a) {
    case conf::LimitAction::kTempfail:
      return "tempfail";
    case conf::LimitAction::kReject:
      return "reject";
    case conf::LimitAction::kDelay:
      return "delay";
    case conf::LimitAction::kBan:
      return "ban";
  }
  return "?";
}

// The stage at which a count is checked (auth failures and errors: their events).
Stage countStage(conf::CountKind k) {
  switch (k) {
    case conf::CountKind::kConnections:
      return Stage::kConnect;
    case conf::CountKind::kAuthFailures:
      return Stage::kAuth;
    case conf::CountKind::kErrors:
      return Stage::kClose;  // never a stage of its own: counted on the event
    case conf::CountKind::kMessages:
      return Stage::kMail;
    case conf::CountKind::kRecipients:
      return Stage::kRcpt;
    case conf::CountKind::kBytes:
      return Stage::kData;
  }
  return Stage::kClose;
}

conf::ConfigError errorAt(const conf::Config& c, const conf::Position& p, std::string msg) {
  conf::ConfigError e;
  e.file = c.path;
  e.line = p.line;
  e.column = p.column;
  e.message = std::move(msg);
  return e;
}

}  // namespace

void forEachRuleMetric(const std::function<void(const RuleMetric&)>& fn) {
  std::lock_guard<std::mutex> lock(g_metrics_mu);
  for (const auto& [k, m] : metrics()) fn(*m);
}

uint64_t credentialHash(std::string_view user, std::string_view password) {
  uint64_t h = fnv(ascii::lower(user));
  h = fnv(std::string_view("\0", 1), h);
  h = fnv(password, h);
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return h | 1;  // never 0 (0 = no credential remembered)
}

// --- compiled conditions ---

struct CompiledMatch {
  std::vector<std::string> listeners, protocols, users;
  std::vector<const IpSet*> nets;
  std::vector<std::string> countries;
  std::vector<uint32_t> asn;
  std::optional<bool> tls, authenticated;
  ReMatcher helo, sender, rcpt, header, attachment;
  std::unique_ptr<CompiledMatch> negated;
  bool needs_meta = false;

  bool compile(const Policy& pol, const conf::Config& cfg, const conf::Match& m,
               const std::vector<std::pair<std::string, std::vector<std::string>>>& country_lists,
               std::vector<conf::ConfigError>* errors) {
    listeners = m.listeners;
    protocols = m.protocols;
    for (const auto& u : m.users) users.push_back(ascii::lower(u));
    for (const auto& name : m.client_net_in) {
      const IpSet* s = pol.list(name);
      if (!s) {
        errors->push_back(errorAt(cfg, m.pos, "unknown network list \"" + name + "\""));
        return false;
      }
      nets.push_back(s);
    }
    countries = m.country_in;
    for (const auto& name : m.country_lists) {
      bool found = false;
      for (const auto& [n, codes] : country_lists)
        if (n == name) {
          countries.insert(countries.end(), codes.begin(), codes.end());
          found = true;
        }
      if (!found) {
        errors->push_back(errorAt(cfg, m.pos, "unknown country list \"" + name + "\""));
        return false;
      }
    }
    asn = m.asn;
    tls = m.tls;
    authenticated = m.authenticated;
    std::string err;
    struct {
      ReMatcher* re;
      const std::vector<std::string>* pats;
      const char* what;
    } res[] = {{&helo, &m.helo_re2, "helo"},
               {&sender, &m.sender_re2, "sender"},
               {&rcpt, &m.rcpt_re2, "rcpt"},
               {&header, &m.header_re2, "header"},
               {&attachment, &m.attachment_re2, "attachment.filename"}};
    for (auto& r : res) {
      if (!r.re->compile(*r.pats, &err)) {
        errors->push_back(errorAt(cfg, m.pos, std::string(r.what) + ": bad RE2 pattern: " + err));
        return false;
      }
    }
    needs_meta = !header.empty() || !attachment.empty();
    if (m.negated) {
      negated = std::make_unique<CompiledMatch>();
      if (!negated->compile(pol, cfg, *m.negated, country_lists, errors)) return false;
      needs_meta = needs_meta || negated->needs_meta;
    }
    return true;
  }

  // Whether the facts match; `why` gets what decided (for traces).
  bool matches(const SessionFacts& f, const NetAddr& client, const MessageMeta* meta, std::string* why) const {
    // The reason a condition fails is text for --explain only: built when asked for.
    auto fail = [why](auto&& make) {
      if (why) *why = make();
      return false;
    };
    if (!listeners.empty() && std::find(listeners.begin(), listeners.end(), f.listener) == listeners.end())
      return fail([&] { return std::string("listener " + f.listener + " not listed"); });
    if (!protocols.empty()) {
      const std::string proto = f.submission ? "submission" : f.protocol;
      if (std::find(protocols.begin(), protocols.end(), proto) == protocols.end())
        return fail([&] { return std::string("protocol " + proto + " not listed"); });
    }
    if (!nets.empty()) {
      bool in = false;
      for (const IpSet* s : nets) in = in || s->contains(client);
      if (!in) return fail([&] { return std::string("client " + f.client_ip + " not in the lists"); });
    }
    if (!countries.empty() && std::find(countries.begin(), countries.end(), f.country) == countries.end())
      return fail([&] { return std::string("country \"" + f.country + "\" not listed"); });
    if (!asn.empty() && std::find(asn.begin(), asn.end(), f.asn) == asn.end())
      return fail([&] { return std::string("asn " + std::to_string(f.asn) + " not listed"); });
    if (tls && *tls != f.secured) return fail([&] { return std::string(f.secured ? "tls" : "no tls"); });
    if (authenticated && *authenticated != f.authenticated)
      return fail([&] { return std::string(f.authenticated ? "authenticated" : "not authenticated"); });
    if (!users.empty() &&
        std::none_of(users.begin(), users.end(), [&f](const std::string& u) { return ascii::iequals(u, f.user); }))
      return fail([&] { return std::string("user not listed"); });
    if (!helo.empty() && !helo.match(f.helo)) return fail([&] { return std::string("helo does not match"); });
    if (!sender.empty() && (!f.from || !sender.match(*f.from))) return fail([&] { return std::string("sender does not match"); });
    if (!rcpt.empty()) {
      bool any = false;
      if (!f.rcpt.empty()) any = rcpt.match(f.rcpt);
      for (const auto& r : f.rcpts)
        if (!any && f.rcpt.empty()) any = rcpt.match(stripPath(r));
      if (!any) return fail([&] { return std::string("recipient does not match"); });
    }
    if (!header.empty()) {
      bool any = false;
      if (meta)
        for (const auto& h : meta->headers)
          if (header.match(h)) {
            any = true;
            break;
          }
      if (!any) return fail([&] { return std::string("no header field matches"); });
    }
    if (!attachment.empty()) {
      bool any = false;
      if (meta)
        for (const auto& n : meta->attachment_names)
          if (attachment.match(n)) {
            any = true;
            if (why) *why = "attachment \"" + n + "\"";
            break;
          }
      if (!any) return fail([&] { return std::string("no attachment name matches"); });
    }
    if (negated) {
      std::string inner;
      if (negated->matches(f, client, meta, &inner)) return fail([&] { return std::string("the not: condition matches"); });
    }
    return true;
  }
};

struct CompiledLimit {
  const conf::LimitRuleConfig* cfg = nullptr;
  CompiledMatch when;
  uint64_t id = 0;
  Gcra gcra;
  Stage stage = Stage::kConnect;
  Verdict custom;  // parsed `reply`, if any
  bool has_custom = false;
};

struct CompiledRule {
  const conf::PolicyRuleConfig* cfg = nullptr;
  Stage stage = Stage::kConnect;
  CompiledMatch when;
  Verdict verdict;  // what it does when it matches
  RuleMetric* hits = nullptr;
  RuleMetric* shadow_hits = nullptr;
};

Policy::~Policy() = default;

const IpSet* Policy::list(const std::string& name) const {
  for (const auto& [n, s] : net_lists_)
    if (n == name) return s.get();
  return nullptr;
}

bool Policy::exempt(const NetAddr& addr) const {
  for (const IpSet* s : exempt_)
    if (s->contains(addr)) return true;
  return false;
}

bool Policy::neverBan(const NetAddr& addr) const {
  if (exempt(addr)) return true;
  for (const IpSet* s : never_)
    if (s->contains(addr)) return true;
  return false;
}

NetAddr Policy::banNet(const NetAddr& addr) const {
  const auto& l = config_->policy.limits;
  return clientNet(addr, l.ipv4_prefix, l.ipv6_prefix);
}

BanParams Policy::banParams() const {
  const auto& b = config_->policy.limits.bans;
  BanParams p;
  p.ttl = b.ttl;
  p.factor = b.factor;
  p.max = b.max;
  p.forget = b.forget;
  return p;
}

std::shared_ptr<const Policy> Policy::compile(const conf::Config& config, const Policy* running,
                                              std::vector<conf::ConfigError>* errors,
                                              std::vector<std::string>* warnings) {
  std::shared_ptr<Policy> pol(new Policy());
  pol->config_ = std::shared_ptr<const conf::Config>(std::make_shared<conf::Config>(config));
  const conf::Config& cfg = *pol->config_;
  const conf::PolicyConfig& pc = cfg.policy;
  const size_t errors_before = errors->size();

  for (const auto& l : pc.lists) {
    if (!l.countries.empty()) {
      pol->country_lists_.emplace_back(l.name, l.countries);
      continue;
    }
    auto set = std::make_unique<IpSet>();
    std::string err;
    for (const auto& c : l.cidrs)
      if (!set->add(c, &err)) errors->push_back(errorAt(cfg, l.pos, "lists." + l.name + ": " + err));
    if (!l.file.empty() && !set->addFile(l.file, &err))
      errors->push_back(errorAt(cfg, l.pos, "lists." + l.name + ": " + err));
    set->finish();
    pol->net_lists_.emplace_back(l.name, std::move(set));
  }

  auto openDb = [&](const conf::GeoipDbConfig& dc, const char* what,
                    const std::shared_ptr<const GeoDb>& old) -> std::shared_ptr<const GeoDb> {
    if (!dc.configured()) return nullptr;
    std::string err;
    std::shared_ptr<const GeoDb> db(GeoDb::open(dc.mmdb, dc.field, &err));
    if (db) return db;
    if (old) {
      warnings->push_back(std::string("geoip.") + what + ": " + err + "; the database loaded before stays in use");
      return old;
    }
    errors->push_back(errorAt(cfg, dc.pos, std::string("geoip.") + what + ": " + err));
    return nullptr;
  };
  pol->country_ = openDb(pc.geoip.country, "country", running ? running->country_ : nullptr);
  pol->asn_ = openDb(pc.geoip.asn, "asn", running ? running->asn_ : nullptr);

  auto listsNamed = [&](const std::vector<std::string>& names, std::vector<const IpSet*>* out) {
    for (const auto& n : names) {
      const IpSet* s = pol->list(n);
      if (!s)
        errors->push_back(errorAt(cfg, {}, "limits: unknown network list \"" + n + "\""));
      else
        out->push_back(s);
    }
  };
  listsNamed(pc.limits.exempt, &pol->exempt_);
  listsNamed(pc.limits.bans.never, &pol->never_);

  pol->stages_ = stageBit(Stage::kConnect);  // bans and GeoIP
  for (const auto& lr : pc.limits.rules) {
    auto cl = std::make_unique<CompiledLimit>();
    cl->cfg = &lr;
    if (!cl->when.compile(*pol, cfg, lr.when, pol->country_lists_, errors)) continue;
    cl->id = fnv(lr.name, fnv(countName(lr.count)));
    if (lr.rate > 0) cl->gcra = Gcra::of(lr.rate, lr.per, lr.burst == 0 ? lr.rate : lr.burst);
    cl->stage = countStage(lr.count);
    if (!lr.reply.empty()) {
      cl->has_custom = parseReplyLine(lr.reply, &cl->custom.code, &cl->custom.enhanced, &cl->custom.text);
      if (!cl->has_custom) errors->push_back(errorAt(cfg, lr.pos, "limit " + lr.name + ": bad reply"));
    }
    if (cl->stage == Stage::kData && cl->when.needs_meta) pol->needs_meta_ = true;
    if (cl->stage != Stage::kClose) pol->stages_ |= stageBit(cl->stage);
    pol->limits_.push_back(std::move(cl));
  }
  if (pc.limits.max_user_sessions > 0) pol->stages_ |= stageBit(Stage::kAuth);

  for (const auto& pr : pc.policies) {
    auto r = std::make_unique<CompiledRule>();
    r->cfg = &pr;
    if (!parseStage(pr.stage, &r->stage)) {
      errors->push_back(errorAt(cfg, pr.pos, "policy " + pr.name + ": unknown stage \"" + pr.stage + "\""));
      continue;
    }
    if (!r->when.compile(*pol, cfg, pr.when, pol->country_lists_, errors)) continue;
    if (r->stage == Stage::kData && r->when.needs_meta) pol->needs_meta_ = true;
    Verdict& v = r->verdict;
    switch (pr.then) {
      case conf::PolicyAction::kAccept:
        v.action = Action::kContinue;
        break;
      case conf::PolicyAction::kReject:
        v.action = Action::kReject;
        break;
      case conf::PolicyAction::kTempfail:
        v.action = Action::kTempfail;
        break;
      case conf::PolicyAction::kDelay:
        v.action = Action::kDelay;
        v.delay = pr.delay;
        break;
      case conf::PolicyAction::kTag:
        v.action = Action::kAddHeader;
        v.header = pr.header.empty() ? "X-Mailgate-Policy: " + pr.name : pr.header;
        break;
      case conf::PolicyAction::kQuarantine:
        v.action = Action::kQuarantine;
        break;
    }
    if (!pr.reply.empty() && !parseReplyLine(pr.reply, &v.code, &v.enhanced, &v.text))
      errors->push_back(errorAt(cfg, pr.pos, "policy " + pr.name + ": bad reply"));
    v.reason = "rule " + pr.name;
    r->hits = metric("rule", pr.name, pr.shadow ? "shadow" : std::string(actionName(v.action)));
    pol->stages_ |= stageBit(r->stage);
    pol->rules_.push_back(std::move(r));
  }
  if (errors->size() != errors_before) return nullptr;
  return pol;
}

// --- the per-session filter ---

class PolicyFilter final : public Filter {
 public:
  PolicyFilter(std::shared_ptr<const Policy> p, const SessionFacts& facts, const FilterServices& services,
               Trace* trace)
      : pol_(std::move(p)), services_(services), trace_(trace), dry_(trace != nullptr) {
    parseAddr(facts.client_ip, &client_);
    exempt_ = pol_->exempt(client_);
  }
  ~PolicyFilter() override {
    if (dry_) return;
    for (unsigned i = 0; i < held_n_; i++) policyState().counters.release(held_[i]);
  }

  std::string_view name() const override { return "policy"; }
  uint32_t stages() const override { return pol_->stages_; }
  std::chrono::milliseconds deadline() const override { return std::chrono::seconds(30); }
  Verdict onError() const override {
    // A data-stage message parse that failed or took too long: the rules that
    // needed it cannot be applied; the message is not refused for that.
    return Verdict::next();
  }

  Verdict onStage(Stage stage, SessionFacts& facts, const Resumer& resume) override {
    if (stage == Stage::kConnect) {
      Verdict v = connect(facts);
      if (isTerminal(v.action) || v.action == Action::kDelay) return v;
    }
    if (stage == Stage::kAuth) {
      Verdict v = authPrecheck(facts);
      if (isTerminal(v.action)) return v;
    }
    // At data, the limits and rules that look at header fields or attachment names
    // run once the message is parsed.
    if (stage == Stage::kData && pol_->needs_meta_ && facts.message && !meta_) {
      if (dry_ || !services_.content) {
        meta_ = std::make_shared<MessageMeta>();
        std::string err;
        extractMessageMeta(*facts.message, meta_.get(), &err);
      } else {
        auto body = facts.message;
        auto meta = std::make_shared<MessageMeta>();
        Resumer r = resume;
        const bool queued = services_.content->submit(
            [body, meta, r, this]() {
              std::string err;
              extractMessageMeta(*body, meta.get(), &err);
              r([meta, this](SessionFacts& f) {
                meta_ = meta;
                return limitsAndRules(Stage::kData, f);
              });
            },
            std::chrono::seconds(20));
        if (queued) return Verdict::pending();
        meta_ = std::make_shared<MessageMeta>();  // no room: the rules see no headers
      }
    }
    return limitsAndRules(stage, facts);
  }

  // A limit's delay does not skip the stage's rules: a refusal by a rule wins over it.
  Verdict limitsAndRules(Stage stage, SessionFacts& facts) {
    const Verdict tarpit = limits(stage, facts);
    if (isTerminal(tarpit.action)) return tarpit;
    return withTarpit(tarpit, rules(stage, facts));
  }

  // The rules' answer, or the limits' delay when the rules do not refuse (the longer
  // delay when both delay).
  static Verdict withTarpit(const Verdict& tarpit, Verdict ruled) {
    if (tarpit.action != Action::kDelay || isTerminal(ruled.action)) return ruled;
    if (ruled.action == Action::kDelay && ruled.delay > tarpit.delay) return ruled;
    return tarpit;
  }

  Verdict onEvent(const Event& ev, SessionFacts& facts) override {
    if (exempt_) return Verdict::next();
    switch (ev.kind) {
      case EventKind::kAuthFailure:
        return countEvent(conf::CountKind::kAuthFailures, Stage::kAuth, facts, ev.credential);
      case EventKind::kError:
        return countEvent(conf::CountKind::kErrors, Stage::kClose, facts, 0);
      case EventKind::kAuthSuccess:
        return userSessions(facts);
    }
    return Verdict::next();
  }

 private:
  void trace(Stage stage, const char* kind, std::string name, bool matched, std::string detail) {
    if (!trace_) return;
    trace_->push_back(TraceLine{stage, kind, std::move(name), matched, std::move(detail)});
  }

  Verdict connect(SessionFacts& facts) {
    if (pol_->countryDb()) facts.country = pol_->countryDb()->lookup(client_);
    if (pol_->asnDb()) facts.asn = pol_->asnDb()->lookupNumber(client_);
    if (pol_->countryDb() || pol_->asnDb())
      if (trace_) trace(Stage::kConnect, "geoip", "", true,
            "country \"" + facts.country + "\" asn " + std::to_string(facts.asn));
    if (exempt_) {
      if (trace_) trace(Stage::kConnect, "exempt", "", true, facts.client_ip + " is in limits.defaults.exempt");
      return Verdict::next();
    }
    Ban ban;
    if (policyState().bans.find(client_, BanTable::wallMs(), &ban)) {
      if (trace_) trace(Stage::kConnect, "ban", ban.net.text(), true,
            "banned (" + ban.reason + "), " + std::to_string((ban.expires_ms - BanTable::wallMs()) / 1000) +
                " s left");
      if (!dry_) policyState().stats.banned_refusals++;
      static RuleMetric* m = metric("ban", "*", "refused");
      if (!dry_) m->count++;
      Verdict v = Verdict::of(Action::kClose, "banned: " + ban.reason + " (" + ban.net.text() + ")");
      v.text = "Too many failures from your address, try again later";
      return v;
    }
    if (trace_) trace(Stage::kConnect, "ban", "", false, "not banned");
    return Verdict::next();
  }

  // The key of a limit for these facts; false when a part is missing (no key: the
  // limit does not apply, e.g. sender.domain of the null sender).
  bool keyOf(const CompiledLimit& l, const SessionFacts& f, CounterKey* out) const {
    KeyBuilder kb(l.id);
    const auto& defs = pol_->config().policy.limits;
    for (conf::KeyPart part : l.cfg->key) {
      switch (part) {
        case conf::KeyPart::kClientNet: {
          NetAddr n = clientNet(client_, defs.ipv4_prefix, defs.ipv6_prefix);
          kb.add(&n, sizeof n);
          break;
        }
        case conf::KeyPart::kClientIp:
          kb.add(&client_, sizeof client_);
          break;
        case conf::KeyPart::kListener:
          kb.add(f.listener);
          break;
        case conf::KeyPart::kUser:
          if (f.user.empty()) return false;
          kb.add(ascii::lower(f.user));
          break;
        case conf::KeyPart::kSenderDomain: {
          if (!f.from) return false;
          std::string_view d = domainOf(*f.from);
          if (d.empty()) return false;
          kb.add(ascii::lower(d));
          break;
        }
        case conf::KeyPart::kRcptDomain: {
          std::string_view d = domainOf(f.rcpt);
          if (d.empty()) return false;
          kb.add(ascii::lower(d));
          break;
        }
      }
    }
    *out = kb.key();
    return true;
  }

  // Counts n events against a rate limit; true when over it. Cluster scope: a fixed
  // window of `per`, this gateway's count plus the others'. `peek`: whether n more
  // would be over, counting nothing (as in a dry run).
  bool overRate(const CompiledLimit& l, const CounterKey& key, uint64_t n, std::string* detail,
                bool peek = false) {
    auto& counters = policyState().counters;
    const auto& c = *l.cfg;
    const bool dry = dry_ || peek;
    if (c.cluster) {
      ClusterCounters* cl = policyState().cluster.load(std::memory_order_acquire);
      const int64_t now = BanTable::wallMs();
      const int64_t per = std::max<int64_t>(1, c.per.count());
      const int64_t window = now - now % per;
      const uint64_t others = cl ? cl->others(key, window) : 0;
      auto count = [&](CounterState& s) {
        if (s.tat_us != window) {
          s.tat_us = window;
          s.extra = 0;
        }
        const uint64_t total = s.extra + others;
        if (total + n > c.rate) return std::pair<uint64_t, bool>(total, true);
        if (!dry) s.extra += n;
        return std::pair<uint64_t, bool>(total + n, false);
      };
      std::pair<uint64_t, bool> r;
      if (dry) {
        CounterState s = counters.peek(key);
        r = count(s);
      } else {
        r = counters.update(key, count);
      }
      if (!r.second && !dry && cl) cl->add(key, window, static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX)));
      if (detail) *detail = std::to_string(r.first) + " of " + std::to_string(c.rate) + " in this cluster window";
      return r.second;
    }
    const int64_t now = steadyUs();
    const uint32_t units = static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX));
    int64_t wait;
    if (dry) {
      CounterState s = counters.peek(key);
      wait = l.gcra.take(&s.tat_us, now, units, true);
    } else {
      wait = counters.update(key, [&](CounterState& s) { return l.gcra.take(&s.tat_us, now, units, false); });
    }
    if (detail)
      *detail = wait > 0 ? "over " + std::to_string(c.rate) + " per " + std::to_string(c.per.count() / 1000) +
                             " s (next in " + std::to_string(wait / 1000) + " ms)"
                       : "within " + std::to_string(c.rate) + " per " + std::to_string(c.per.count() / 1000) + " s";
    return wait > 0;
  }

  // The verdict a limit's action gives at a stage (offences grow the tarpit).
  Verdict exceeded(const CompiledLimit& l, const CounterKey& key, Stage stage, const SessionFacts& f,
                   bool concurrency) {
    const auto& c = *l.cfg;
    Verdict v;
    v.reason = "limit " + c.name + " (" + countName(c.count) + ")";
    if (!dry_) {
      policyState().stats.limited++;
      policyState().limited_top.record(client_, c.name, BanTable::wallMs());
      metric("limit", c.name, limitActionName(c.on_exceed))->count++;
    }
    switch (c.on_exceed) {
      case conf::LimitAction::kDelay: {
        uint32_t offences = 1;
        if (!dry_) {
          const int64_t now = steadyUs();
          const int64_t forget_us = std::max<int64_t>(c.per.count(), 60000) * 1000;
          offences = policyState().counters.update(key, [&](CounterState& s) {
            if (s.last_offence_us != 0 && now - s.last_offence_us > forget_us) s.offences = 0;
            s.last_offence_us = now;
            return ++s.offences;
          });
        }
        auto d = c.delay_min;
        for (uint32_t i = 1; i < offences && d < c.delay_max; i++) d *= 2;
        v.action = Action::kDelay;
        v.delay = std::min(d, c.delay_max);
        if (g_limit_log.allow() && !dry_)
          log::info("policy delay", {{"session", f.session_id},
                                     {"client", f.client_ip},
                                     {"limit", c.name},
                                     {"delay_ms", static_cast<uint64_t>(v.delay.count())}});
        return v;
      }
      case conf::LimitAction::kBan: {
        const NetAddr net = pol_->banNet(client_);
        if (pol_->neverBan(client_)) {
          v.action = Action::kTempfail;
          break;
        }
        if (!dry_) {
          Ban b = policyState().bans.ban(net, pol_->banParams(), c.name, core::hostName(), BanTable::wallMs());
          policyState().stats.bans_made++;
          if (g_limit_log.allow())
            log::warn("policy ban", {{"session", f.session_id},
                                   {"client", f.client_ip},
                                   {"net", net.text()},
                                   {"limit", c.name},
                                   {"level", b.level},
                                   {"seconds", static_cast<uint64_t>((b.expires_ms - b.created_ms) / 1000)}});
        }
        v.action = Action::kClose;
        v.text = "Too many failures from your address, try again later";
        break;
      }
      case conf::LimitAction::kTempfail:
        v.action = Action::kTempfail;
        break;
      case conf::LimitAction::kReject:
        v.action = Action::kReject;
        break;
    }
    // The protocol's reply for a limit. A limit's own reply is for SMTP; IMAP and POP3
    // keep their response codes and texts.
    if (f.protocol == "smtp" && l.has_custom) {
      v.code = l.custom.code;
      v.enhanced = l.custom.enhanced;
      v.text = l.custom.text;
    } else if (f.protocol == "smtp") {
      const bool temp = v.action != Action::kReject;
      if (temp && v.action != Action::kClose) {
        if (stage == Stage::kRcpt) {
          v.code = 452;
          v.enhanced = "4.5.3";
          v.text = "Too many recipients, try again later";
        } else if (stage == Stage::kMail || stage == Stage::kData) {
          v.code = 450;
          v.enhanced = "4.7.1";
          v.text = "Too much mail from you, try again later";
        } else if (stage == Stage::kConnect) {
          v.text = "Too many connections from your address, try again later";
        }
      }
    } else if (f.protocol == "imap") {
      if (stage != Stage::kConnect && v.action != Action::kClose) v.response_code = "LIMIT";
      if (v.text.empty())
        v.text = stage == Stage::kConnect ? "Too many connections from your address" : "Limit exceeded";
    } else if (f.protocol == "pop3") {
      v.response_code = concurrency ? "IN-USE" : "SYS/TEMP";
      if (v.text.empty())
        v.text = stage == Stage::kConnect ? "Too many connections from your address" : "Limit exceeded";
    }
    return v;
  }

  // The stage's limits: the first refusal, else the longest delay (every limit is
  // counted until a refusal).
  Verdict limits(Stage stage, SessionFacts& facts) {
    if (exempt_) return Verdict::next();
    Verdict result = Verdict::next();
    auto refused = [&result](Verdict e) {
      if (isTerminal(e.action)) {
        result = std::move(e);
        return true;
      }
      if (e.action == Action::kDelay && e.delay > result.delay) result = std::move(e);
      return false;
    };
    for (const auto& lp : pol_->limits_) {
      const CompiledLimit& l = *lp;
      if (l.stage != stage || l.cfg->count == conf::CountKind::kAuthFailures) continue;
      std::string why;
      if (!l.when.matches(facts, client_, meta_.get(), trace_ ? &why : nullptr)) {
        if (trace_) trace(stage, "limit", l.cfg->name, false, why);
        continue;
      }
      CounterKey key;
      if (!keyOf(l, facts, &key)) {
        if (trace_) trace(stage, "limit", l.cfg->name, false, "no key");
        continue;
      }
      forgiveIfLifted(l, key);
      uint64_t n = 1;
      if (l.cfg->count == conf::CountKind::kBytes) n = facts.message ? facts.message->size() : 0;
      if (l.cfg->concurrency > 0 && l.cfg->count == conf::CountKind::kConnections) {
        bool over;
        uint32_t now_held;
        if (dry_) {
          now_held = policyState().counters.peek(key).concurrent;
          over = now_held >= l.cfg->concurrency;
        } else {
          const uint32_t max = l.cfg->concurrency;
          now_held = policyState().counters.update(key, [max](CounterState& s) {
            if (s.concurrent >= max) return s.concurrent;
            return s.concurrent++;
          });
          over = now_held >= max;
          if (!over) hold(key);
        }
        if (trace_) trace(stage, "limit", l.cfg->name, over,
              std::to_string(now_held) + " of " + std::to_string(l.cfg->concurrency) + " concurrent");
        if (over && refused(exceeded(l, key, stage, facts, true))) return result;
      }
      if (l.cfg->rate > 0) {
        std::string detail;
        const bool over = overRate(l, key, n, trace_ ? &detail : nullptr);
        if (trace_) trace(stage, "limit", l.cfg->name, over, detail);
        if (over && refused(exceeded(l, key, stage, facts, false))) return result;
      }
    }
    return result;
  }

  void hold(const CounterKey& key) {
    if (held_n_ < kMaxHeld) {
      held_[held_n_++] = key;
    } else {
      policyState().counters.release(key);  // more limits than slots: not held
    }
  }

  // A ban on this address lifted since the key last counted: the count that led to
  // it starts over (else the next failure or login would ban the address again).
  void forgiveIfLifted(const CompiledLimit& l, const CounterKey& key) {
    if (dry_ || l.cfg->on_exceed != conf::LimitAction::kBan) return;
    const int64_t lifted = policyState().bans.liftedAt(client_);
    if (lifted == 0) return;
    policyState().counters.update(key, [lifted](CounterState& s) {
      if (s.pardoned_ms >= lifted) return 0;
      s.pardoned_ms = lifted;
      s.tat_us = 0;
      s.extra = 0;
      s.offences = 0;
      return 1;
    });
  }

  // Before a login: an address already over an auth-failure limit that refuses or
  // bans is refused without asking the directory.
  Verdict authPrecheck(SessionFacts& facts) {
    if (exempt_) return Verdict::next();
    for (const auto& lp : pol_->limits_) {
      const CompiledLimit& l = *lp;
      if (l.cfg->count != conf::CountKind::kAuthFailures || l.cfg->rate == 0) continue;
      if (l.cfg->on_exceed == conf::LimitAction::kDelay) continue;  // the tarpit is on the failure reply
      if (!l.when.matches(facts, client_, nullptr, nullptr)) continue;
      CounterKey key;
      if (!keyOf(l, facts, &key)) continue;
      forgiveIfLifted(l, key);
      // (overRate reads a cluster-scope limit's window count, not a GCRA time.)
      std::string detail;
      const bool over = overRate(l, key, 1, trace_ ? &detail : nullptr, /*peek=*/true);
      if (trace_) trace(Stage::kAuth, "limit", l.cfg->name, over, "auth failures: " + detail);
      if (over) return exceeded(l, key, Stage::kAuth, facts, false);
    }
    return Verdict::next();
  }

  Verdict countEvent(conf::CountKind kind, Stage stage, SessionFacts& facts, uint64_t credential) {
    Verdict result = Verdict::next();
    for (const auto& lp : pol_->limits_) {
      const CompiledLimit& l = *lp;
      if (l.cfg->count != kind || l.cfg->rate == 0) continue;
      if (!l.when.matches(facts, client_, nullptr, nullptr)) continue;
      CounterKey key;
      if (!keyOf(l, facts, &key)) continue;
      forgiveIfLifted(l, key);
      if (l.cfg->distinct_credentials && credential != 0 && !dry_) {
        // The last credential is remembered in an entry of its own: the limit's entry's
        // `extra` is the count of a cluster-scope limit.
        KeyBuilder ckb(l.id ^ 0x6372656400000000ull);  // "cred"
        ckb.add(&key, sizeof key);
        const bool repeat = policyState().counters.update(ckb.key(), [credential](CounterState& s) {
          if (s.extra == credential) return true;
          s.extra = credential;
          return false;
        });
        if (repeat) continue;  // the same wrong user and password again: not counted again
      }
      if (!overRate(l, key, 1, nullptr)) continue;
      Verdict v = exceeded(l, key, stage, facts, false);
      if (isTerminal(v.action)) return v;
      if (v.action == Action::kDelay && v.delay > result.delay) result = v;
    }
    return result;
  }

  // The per-user session limit (Dovecot's mail_max_userip_connections): user and
  // client address, IMAP and POP3.
  Verdict userSessions(SessionFacts& facts) {
    const uint32_t max = pol_->config().policy.limits.max_user_sessions;
    if (max == 0 || user_held_ || (facts.protocol != "imap" && facts.protocol != "pop3")) return Verdict::next();
    KeyBuilder kb(0x75736572u);  // "user"
    kb.add(ascii::lower(facts.user));
    const auto& defs = pol_->config().policy.limits;
    const NetAddr net = clientNet(client_, defs.ipv4_prefix, defs.ipv6_prefix);
    kb.add(&net, sizeof net);
    const CounterKey key = kb.key();
    // A dry run reads the count and holds nothing (its destructor releases nothing).
    const uint32_t held = dry_ ? policyState().counters.peek(key).concurrent
                               : policyState().counters.update(key, [max](CounterState& s) {
                                   if (s.concurrent >= max) return s.concurrent;
                                   return s.concurrent++;
                                 });
    if (trace_) trace(Stage::kAuth, "limit", "user_sessions", held >= max,
          std::to_string(held) + " of " + std::to_string(max) + " sessions of the user");
    if (held >= max) {
      if (!dry_) {
        policyState().stats.limited++;
        policyState().limited_top.record(client_, "user_sessions", BanTable::wallMs());
        metric("limit", "user_sessions", "tempfail")->count++;
      }
      Verdict v = Verdict::of(Action::kTempfail, "limit user_sessions (" + std::to_string(max) + ")");
      v.response_code = facts.protocol == "imap" ? "LIMIT" : "IN-USE";
      v.text = "Too many sessions for this user from your address";
      return v;
    }
    if (dry_) return Verdict::next();
    user_held_ = true;
    hold(key);
    return Verdict::next();
  }

  // A delay or a tag applies and the next rules are still tried (the first of them is
  // answered: a filter gives one verdict); a terminal action or accept decides the stage.
  Verdict rules(Stage stage, SessionFacts& facts) {
    Verdict soft = Verdict::next();
    for (const auto& rp : pol_->rules_) {
      const CompiledRule& r = *rp;
      if (r.stage != stage) continue;
      std::string why;
      bool m = r.when.matches(facts, client_, meta_.get(), trace_ ? &why : nullptr);
      // What matched (an attachment's name), for the log line of a refusal: asked again
      // only on a match, so that a rule that does not match builds no text.
      if (m && !trace_) m = r.when.matches(facts, client_, meta_.get(), &why);
      if (trace_) trace(stage, "rule", r.cfg->name, m,
            m ? std::string(r.cfg->shadow ? "shadow: " : "") + "then " + std::string(actionName(r.verdict.action)) +
                    (why.empty() ? "" : " (" + why + ")")
              : why);
      if (!m) continue;
      if (!dry_) r.hits->count++;
      if (r.cfg->shadow) {
        if (!dry_ && g_shadow_log.allow())
          log::info("policy shadow match", {{"session", facts.session_id},
                                             {"client", facts.client_ip},
                                             {"rule", r.cfg->name},
                                             {"stage", stageName(stage)},
                                             {"would", actionName(r.verdict.action)},
                                             {"detail", why}});
        continue;
      }
      if (r.cfg->then == conf::PolicyAction::kAccept) return soft;
      Verdict v = r.verdict;
      if (!why.empty()) v.reason += ": " + why;
      if (!isTerminal(v.action)) {
        if (soft.action == Action::kContinue) soft = std::move(v);
        continue;
      }
      return v;
    }
    return soft;
  }

  static constexpr unsigned kMaxHeld = 8;
  std::shared_ptr<const Policy> pol_;
  FilterServices services_;
  Trace* trace_;
  bool dry_;
  NetAddr client_;
  bool exempt_ = false;
  bool user_held_ = false;
  CounterKey held_[kMaxHeld];
  unsigned held_n_ = 0;
  std::shared_ptr<MessageMeta> meta_;
};

std::unique_ptr<Filter> PolicyFilterFactory::create(const SessionFacts& facts, const FilterServices& services) const {
  return std::make_unique<PolicyFilter>(policy_, facts, services, nullptr);
}

std::unique_ptr<Filter> makeDryRunFilter(std::shared_ptr<const Policy> policy, const SessionFacts& facts,
                                         Trace* trace) {
  return std::make_unique<PolicyFilter>(std::move(policy), facts, FilterServices{}, trace);
}

}  // namespace mailgate::filters::policy
