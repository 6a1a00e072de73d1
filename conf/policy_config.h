#pragma once
// The policy sections of the configuration: lists, geoip, limits, policies
// (../../shared/DESIGN.md, "Policy and content"). Plain data, filled and checked by
// the loader; filters/policy compiles it into the running policy. Every element
// remembers where it was written, so that a problem found when compiling names the
// file, line and column too.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::conf {

struct Position {
  int line = 0;  // 1-based; 0 = unknown (built-in default)
  int column = 0;
};

// lists.NAME: a named set of networks or of countries.
struct ListConfig {
  std::string name;
  std::vector<std::string> cidrs;      // "10.0.0.0/8", "2001:db8::/32", a bare address = /32 or /128
  std::string file;                    // one CIDR a line, '#' comments (absolute path once loaded)
  std::vector<std::string> countries;  // ISO 3166-1 alpha-2, upper case
  Position pos;
};

// geoip.country / geoip.asn: libmaxminddb databases, looked up in order.
struct GeoipDbConfig {
  std::vector<std::string> mmdb;  // absolute paths once loaded
  // Path of the value inside a record, dot-separated: "country_code" (ip-location-db),
  // "country.iso_code" (GeoLite2), "autonomous_system_number".
  std::string field;
  Position pos;
  bool configured() const { return !mmdb.empty(); }
};

struct GeoipConfig {
  GeoipDbConfig country;  // field default: country.iso_code
  GeoipDbConfig asn;      // field default: autonomous_system_number
};

enum class CountKind : uint8_t { kConnections, kAuthFailures, kErrors, kMessages, kRecipients, kBytes };
enum class KeyPart : uint8_t { kClientNet, kClientIp, kListener, kUser, kSenderDomain, kRcptDomain };
enum class LimitAction : uint8_t { kTempfail, kReject, kDelay, kBan };

// The typed conditions of a limit's or a rule's `when`. Unset members do not
// constrain; every set member must hold (and `not`, when present, must not hold).
struct Match {
  std::vector<std::string> listeners;           // listener: NAME | [NAMES]
  std::vector<std::string> protocols;           // protocol: imap | pop3 | smtp | submission
  std::vector<std::string> client_net_in;       // client.net: { in: LIST } | { in: [LISTS] }
  std::vector<std::string> country_in;          // country: { in: LIST } or country: [KP, IR] (inline codes)
  std::vector<std::string> country_lists;       //   (the named lists of the above)
  std::vector<uint32_t> asn;                    // asn: 64500 | [64500, 64501]
  std::optional<bool> tls;                      // tls: true | false
  std::optional<bool> authenticated;            // authenticated: true | false
  std::vector<std::string> users;               // user: NAME | [NAMES] (exact, case-insensitive; stored lower case)
  // RE2 patterns (any one matching is a match); each is checked to compile by the loader.
  std::vector<std::string> helo_re2;            // helo: { re2: '...' }
  std::vector<std::string> sender_re2;          // sender: { re2: '...' }  (local@domain; "" = null sender)
  std::vector<std::string> rcpt_re2;            // rcpt: { re2: '...' }
  std::vector<std::string> header_re2;          // header: { re2: '...' }   data: "Name: value" of each header field
  std::vector<std::string> attachment_re2;      // attachment.filename: { re2: '...' }   data
  std::shared_ptr<const Match> negated;         // not: { ... }
  Position pos;
  bool empty() const;
};

struct LimitRuleConfig {
  std::string name;
  Match when;
  CountKind count = CountKind::kConnections;
  std::vector<KeyPart> key{KeyPart::kClientNet};
  uint32_t concurrency = 0;           // connections only: simultaneous sessions; 0 = none
  uint32_t rate = 0;                  // events per `per`; 0 = no rate limit
  std::chrono::milliseconds per{60000};
  uint32_t burst = 0;                 // 0 = rate (a full period's worth)
  bool distinct_credentials = false;  // auth_failures: the same user+password again does not count
  LimitAction on_exceed = LimitAction::kTempfail;
  std::chrono::milliseconds delay_min{2000};  // on_exceed delay: { delay: 2s..15s }
  std::chrono::milliseconds delay_max{15000};
  std::string reply;                  // "450 4.7.1 text" (must fit the action); empty = the protocol's default
  bool cluster = false;               // scope: cluster
  bool builtin = false;               // one of the built-in defaults (no limits.rules given)
  Position pos;
};

struct BanConfig {
  std::chrono::milliseconds ttl{3600000};          // first ban
  double factor = 4;                               // increment.factor: each repeated ban lasts factor × the last
  std::chrono::milliseconds max{7 * 86400000LL};   // increment.max
  std::chrono::milliseconds forget{86400000};      // a repeat within this of the last ban's end escalates
  std::vector<std::string> never;                  // list names never banned (besides defaults.exempt)
};

struct EarlyTalkerConfig {
  std::vector<std::string> listeners;  // smtp/submission listeners that wait before the greeting
  std::chrono::milliseconds greet_wait{6000};
  LimitAction action = LimitAction::kReject;  // reject (554 5.5.1 and close) | tempfail (421) | ban
  Position pos;
};

struct LimitsConfig {
  bool present = false;       // a `limits` section was given
  uint8_t ipv4_prefix = 32;   // defaults.ipv4_prefix: client.net for IPv4
  uint8_t ipv6_prefix = 64;   // defaults.ipv6_prefix
  std::vector<std::string> exempt;  // list names never limited or banned
  uint32_t max_keys = 100000;       // defaults.max_keys: counter entries kept (least recently used go)
  std::vector<LimitRuleConfig> rules;  // the built-in defaults when `rules` is absent
  BanConfig bans;
  EarlyTalkerConfig early_talker;
  std::chrono::milliseconds line_timeout{20000};  // a started command line must end within this (0 = off)
  // limits.user_sessions: simultaneous IMAP and POP3 sessions of one user from one
  // client address (as Dovecot's mail_max_userip_connections); 0 = off. The client
  // address is client.net at the defaults' prefixes; clients in defaults.exempt lists
  // are not counted.
  uint32_t max_user_sessions = 10;
  Position pos;  // the `limits` key (0 when absent)
};

enum class PolicyAction : uint8_t { kAccept, kReject, kTempfail, kDelay, kTag, kQuarantine };

struct PolicyRuleConfig {
  std::string name;
  std::string stage;  // connect | helo | auth | mail | rcpt | data
  Match when;
  PolicyAction then = PolicyAction::kReject;
  std::string reply;                     // "554 5.7.1 text"; must fit the action
  std::chrono::milliseconds delay{0};    // then: delay
  std::string header;                    // then: tag: "Name: value" (default X-Mailgate-Policy: NAME)
  bool shadow = false;                   // mode: shadow
  Position pos;
};

// The limits that apply when limits.rules is absent (docs/configuration.md lists
// them): connections per client network and listener, failed logins per client network
// (a ban, and a growing delay before), protocol errors per client network.
std::vector<LimitRuleConfig> builtinLimitRules();

// Syntax checks shared by the loader and its tests (pure: no I/O). Each returns false
// and says why in *why when the text is not valid.

// A network: "10.0.0.0/8", "2001:db8::/32", or a bare address (IPv4 or IPv6).
// Host bits may be set (they are cleared when the list is compiled).
bool checkCidr(std::string_view text, std::string* why);
// A limit's rate "N/PERIOD": "60/1m", "10/10m", "500/1h", "100/s" (a bare unit is one
// of it: ms, s, m, h, d). N is 1 or more, PERIOD from 1ms to 30d.
bool parseRate(std::string_view text, uint32_t* count, std::chrono::milliseconds* per, std::string* why);
// A delay "2s..15s" (uniformly drawn between the two) or one duration "5s" (min = max).
bool parseDelayRange(std::string_view text, std::chrono::milliseconds* min, std::chrono::milliseconds* max,
                     std::string* why);
// A reply for a refusal: "CODE X.Y.Z text" where CODE is 3 digits starting with
// `klass` ('4' tempfail, '5' reject), X equals that digit, the text is not empty, and
// the whole is printable ASCII of at most kMaxPolicyReply octets.
inline constexpr size_t kMaxPolicyReply = 256;
bool checkPolicyReply(std::string_view reply, char klass, std::string* why);

struct PolicyConfig {
  std::vector<ListConfig> lists;
  GeoipConfig geoip;
  LimitsConfig limits;
  std::vector<PolicyRuleConfig> policies;

  const ListConfig* findList(const std::string& name) const {
    for (const auto& l : lists)
      if (l.name == name) return &l;
    return nullptr;
  }
};

}  // namespace mailgate::conf
