#include "auth/postgres_policy_codec.h"

namespace mailgate::auth::policy_wire {

namespace {
int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

BanNotify parseBanNotify(std::string_view payload) {
  BanNotify n;
  if (payload.size() > kMaxNotifyPayload) return n;
  if (payload == "*") {
    n.kind = NotifyKind::kAll;
    return n;
  }
  if (payload.empty()) return n;
  if (filters::policy::parseCidr(payload, &n.net)) n.kind = NotifyKind::kNet;
  return n;
}

std::string cidrText(const filters::policy::NetAddr& net) {
  std::string t = net.text();
  if (t.find('/') == std::string::npos) t += "/" + std::to_string(net.prefix);
  return t;
}

std::string formatBanNotify(const filters::policy::NetAddr& net) { return cidrText(net); }

std::string counterKeyText(const filters::policy::CounterKey& key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; ++i) {
    s[static_cast<size_t>(15 - i)] = kHex[(key.hi >> (4 * i)) & 0xF];
    s[static_cast<size_t>(31 - i)] = kHex[(key.lo >> (4 * i)) & 0xF];
  }
  return s;
}

bool parseCounterKeyText(std::string_view text, filters::policy::CounterKey* out) {
  if (text.size() != 32) return false;
  filters::policy::CounterKey k;
  for (size_t i = 0; i < 32; ++i) {
    const int v = hexValue(text[i]);
    if (v < 0) return false;
    uint64_t& half = i < 16 ? k.hi : k.lo;
    half = (half << 4) | static_cast<uint64_t>(v);
  }
  *out = k;
  return true;
}

}  // namespace mailgate::auth::policy_wire
