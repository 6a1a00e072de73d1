// The policy sections' small syntaxes: networks, rates, delay ranges and refusal
// replies, checked when the configuration loads (filters/policy compiles them).
#include "conf/policy_config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "conf/config.h"
#include "gateway/core/ascii.h"

namespace mailgate::conf {
namespace {

bool fail(std::string* why, std::string message) {
  if (why) *why = std::move(message);
  return false;
}

// A decimal number of at most max_digits digits (no sign, no spaces).
bool readNumber(std::string_view s, size_t max_digits, uint64_t* out) {
  if (s.empty() || s.size() > max_digits) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (!ascii::isDigit(c)) return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

constexpr std::chrono::milliseconds kMaxRatePeriod{30LL * 86400000};

}  // namespace

bool Match::empty() const {
  return listeners.empty() && protocols.empty() && client_net_in.empty() && country_in.empty() &&
         country_lists.empty() && asn.empty() && !tls && !authenticated && users.empty() &&
         helo_re2.empty() && sender_re2.empty() && rcpt_re2.empty() && header_re2.empty() &&
         attachment_re2.empty() && !negated;
}

std::vector<LimitRuleConfig> builtinLimitRules() {
  using std::chrono::milliseconds;
  std::vector<LimitRuleConfig> rules(4);
  auto& conn = rules[0];
  conn.name = "default-conn-per-ip";
  conn.count = CountKind::kConnections;
  conn.key = {KeyPart::kClientNet, KeyPart::kListener};
  // Postfix's anvil default (smtpd_client_connection_count_limit 50); no rate: a
  // NAT gateway's users reconnect often, and the concurrency already bounds a flood.
  conn.concurrency = 50;
  conn.on_exceed = LimitAction::kTempfail;

  auto& ban = rules[1];
  ban.name = "default-auth-fail-ip";
  ban.count = CountKind::kAuthFailures;
  ban.key = {KeyPart::kClientNet};
  ban.rate = 10;
  ban.per = milliseconds(600000);
  ban.burst = 10;
  ban.distinct_credentials = true;
  ban.on_exceed = LimitAction::kBan;

  auto& slow = rules[2];
  slow.name = "default-auth-fail-delay";
  slow.count = CountKind::kAuthFailures;
  slow.key = {KeyPart::kClientNet};
  slow.rate = 3;
  slow.per = milliseconds(60000);
  slow.burst = 3;
  slow.distinct_credentials = true;
  slow.on_exceed = LimitAction::kDelay;
  slow.delay_min = milliseconds(2000);
  slow.delay_max = milliseconds(15000);

  auto& errors = rules[3];
  errors.name = "default-errors-ip";
  errors.count = CountKind::kErrors;
  errors.key = {KeyPart::kClientNet};
  errors.rate = 30;
  errors.per = milliseconds(60000);
  errors.burst = 30;
  errors.on_exceed = LimitAction::kTempfail;

  for (auto& r : rules) r.builtin = true;
  return rules;
}

bool checkCidr(std::string_view text, std::string* why) {
  const size_t slash = text.find('/');
  const std::string addr(text.substr(0, slash));
  const bool v6 = addr.find(':') != std::string::npos;
  unsigned char bytes[16];
  if (addr.empty() || ::inet_pton(v6 ? AF_INET6 : AF_INET, addr.c_str(), bytes) != 1)
    return fail(why, "not an IPv4 or IPv6 address or network");
  if (slash == std::string_view::npos) return true;
  uint64_t bits = 0;
  const unsigned width = v6 ? 128 : 32;
  if (!readNumber(text.substr(slash + 1), 3, &bits) || bits > width)
    return fail(why, "the prefix length must be a number from 0 to " + std::to_string(width));
  // ::ffff:a.b.c.d is an IPv4 address; a network of them is written /96 and longer.
  static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (v6 && bits < 96 && std::equal(kMapped, kMapped + 12, bytes))
    return fail(why, "an IPv4-mapped network needs a prefix length of 96 or more");
  return true;
}

bool parseRate(std::string_view text, uint32_t* count, std::chrono::milliseconds* per, std::string* why) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos)
    return fail(why, "expected N/PERIOD, such as 60/1m, 10/10m, 500/1h or 100/s");
  uint64_t n = 0;
  if (!readNumber(text.substr(0, slash), 10, &n) || n == 0 || n > 1000000000)
    return fail(why, "the count before '/' must be a number from 1 to 1000000000");
  std::string period(text.substr(slash + 1));
  // A bare unit is one of it ("100/s"); a bare number has no unit and is refused
  // ("60/1" would read as one second and is more likely a mistake).
  if (period == "ms" || period == "s" || period == "m" || period == "h" || period == "d")
    period = "1" + period;
  if (period.empty() || ascii::isDigit(period.back()))
    return fail(why, "the period after '/' needs a unit (ms, s, m, h or d)");
  std::chrono::milliseconds d{};
  if (!parseDuration(period, &d))
    return fail(why, "the period after '/' is not a duration (1s, 10m, 1h, 1d)");
  if (d.count() == 0 || d > kMaxRatePeriod) return fail(why, "the period must be from 1ms to 30d");
  *count = static_cast<uint32_t>(n);
  *per = d;
  return true;
}

bool parseDelayRange(std::string_view text, std::chrono::milliseconds* min, std::chrono::milliseconds* max,
                     std::string* why) {
  const size_t dots = text.find("..");
  const std::string lo(text.substr(0, dots));
  const std::string hi(dots == std::string_view::npos ? lo : std::string(text.substr(dots + 2)));
  std::chrono::milliseconds a{}, b{};
  if (!parseDuration(lo, &a) || !parseDuration(hi, &b))
    return fail(why, "expected a duration or a range MIN..MAX, such as 5s or 2s..15s");
  if (b.count() == 0) return fail(why, "the delay must be greater than 0");
  if (a > b) return fail(why, "the range's minimum is greater than its maximum");
  *min = a;
  *max = b;
  return true;
}

bool checkPolicyReply(std::string_view reply, char klass, std::string* why) {
  const std::string expected = std::string(1, klass) + "xx " + std::string(1, klass) + ".X.Y text";
  if (reply.size() > kMaxPolicyReply)
    return fail(why, "is longer than " + std::to_string(kMaxPolicyReply) + " octets");
  for (char c : reply)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
      return fail(why, "may hold printable ASCII characters only (no control characters)");
  // CODE: [45][0-5][0-9]
  if (reply.size() < 4 || reply[0] != klass || reply[1] < '0' || reply[1] > '5' ||
      !ascii::isDigit(reply[2]) || reply[3] != ' ')
    return fail(why, "expected \"" + expected + "\"");
  // Enhanced status code (RFC 3463): class "." subject "." detail, 1-3 digits each.
  const std::string_view rest = reply.substr(4);
  const size_t end = rest.find(' ');
  const std::string_view code = rest.substr(0, end);
  const size_t d1 = code.find('.');
  const size_t d2 = d1 == std::string_view::npos ? d1 : code.find('.', d1 + 1);
  uint64_t subject = 0, detail = 0;
  if (d2 == std::string_view::npos || code.substr(0, d1) != std::string_view(&reply[0], 1) ||
      !readNumber(code.substr(d1 + 1, d2 - d1 - 1), 3, &subject) ||
      !readNumber(code.substr(d2 + 1), 3, &detail))
    return fail(why, "expected \"" + expected + "\" (an enhanced status code " + std::string(1, klass) +
                         ".X.Y after the reply code)");
  if (end == std::string_view::npos || rest.find_first_not_of(' ', end) == std::string_view::npos)
    return fail(why, "expected \"" + expected + "\" (the text is missing)");
  return true;
}

}  // namespace mailgate::conf
