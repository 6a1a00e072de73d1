#pragma once
// The wire forms the cluster sync (auth/postgres_policy.h) uses in PostgreSQL, kept
// pure (no I/O, no clock, no logging) so they can be tested alone:
//   - the payload of a NOTIFY on channel mailgate_bans: the network whose row changed
//     ("192.0.2.0/24", PostgreSQL's cidr text), or "*" when the table was truncated
//     (reload in full). The listener reads the row again: a notification says where
//     to look, never what to apply, so a late one cannot undo a newer change.
//   - a counter key as text: 32 lower-case hex digits (hi, then lo).
#include <string>
#include <string_view>

#include "filters/policy/counters.h"
#include "filters/policy/net_prefix.h"

namespace mailgate::auth::policy_wire {

enum class NotifyKind : uint8_t { kNet, kAll, kBad };

struct BanNotify {
  NotifyKind kind = NotifyKind::kBad;
  filters::policy::NetAddr net;
};

inline constexpr size_t kMaxNotifyPayload = 7999;  // PostgreSQL refuses 8000 bytes and more

BanNotify parseBanNotify(std::string_view payload);
// The payload for a network ("*" for a full reload is formatBanNotifyAll()).
std::string formatBanNotify(const filters::policy::NetAddr& net);
inline std::string formatBanNotifyAll() { return "*"; }

// A network as PostgreSQL cidr text: always with its prefix ("192.0.2.1/32").
std::string cidrText(const filters::policy::NetAddr& net);

std::string counterKeyText(const filters::policy::CounterKey& key);
bool parseCounterKeyText(std::string_view text, filters::policy::CounterKey* out);

}  // namespace mailgate::auth::policy_wire
