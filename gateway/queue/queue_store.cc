#include "gateway/queue/queue_store.h"

#include <algorithm>

#include "gateway/core/record_text.h"

namespace mailgate::queue {

namespace {
// The format's version. Decoding is strict: every key below appears exactly once (but
// rcpt: one or more), in any order; an unknown key, a duplicate, a missing key or a
// value that does not parse rejects the whole text. A format that needs another key
// gets a new version line, which an older reader rejects as a whole instead of
// rewriting the entry without the key it does not know.
constexpr std::string_view kMagic = "mailgate-queue: 1";
constexpr size_t kMaxRcpts = 100000;

bool parseMs(std::string_view s, int64_t* out) {
  uint64_t v = 0;
  if (!core::parseDecimal(s, static_cast<uint64_t>(INT64_MAX), true, &v)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

bool parseBool(std::string_view s, bool* out) {
  if (s != "0" && s != "1") return false;
  *out = s == "1";
  return true;
}

std::string msText(int64_t v) { return std::to_string(v < 0 ? 0 : v); }
}  // namespace

std::string_view rcptStateName(RcptState s) {
  switch (s) {
    case RcptState::kPending:
      return "pending";
    case RcptState::kDelivered:
      return "delivered";
    case RcptState::kFailed:
      return "failed";
    case RcptState::kReported:
      return "reported";
  }
  return "pending";
}

bool parseRcptState(std::string_view name, RcptState* out) {
  for (RcptState s : {RcptState::kPending, RcptState::kDelivered, RcptState::kFailed, RcptState::kReported}) {
    if (name == rcptStateName(s)) {
      *out = s;
      return true;
    }
  }
  return false;
}

size_t QueueEntry::count(RcptState s) const {
  return static_cast<size_t>(
      std::count_if(rcpts.begin(), rcpts.end(), [s](const QueueRcpt& r) { return r.state == s; }));
}

QueueStats& queueStats() {
  static QueueStats s;
  return s;
}

bool validQueueId(std::string_view id) {
  // A leading '.' is refused as well: "." and ".." are no names for a file, and the
  // spool directory keeps its temporary files under names that start with '.'.
  if (id.empty() || id.size() > 64 || id[0] == '.') return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// mailgate-queue: 1
// id: ...            (every value %-escaped: printable ASCII as is, the rest %XX)
// ...
// rcpt: ADDR STATE UPDATED_MS REPLY   (ADDR with ' ' escaped too; REPLY the rest of the line)
// (an empty line)
std::string encodeQueueMeta(const QueueEntry& e) {
  std::string out(kMagic);
  out += '\n';
  auto line = [&](std::string_view k, std::string_view v) {
    out += k;
    out += ": ";
    core::percentEscapeTo(v, core::keepPrintableOrSpace, &out);
    out += '\n';
  };
  line("id", e.id);
  line("created_ms", msText(e.created_ms));
  line("next_ms", msText(e.next_ms));
  line("attempts", std::to_string(e.attempts));
  line("mail_from", e.mail_from);
  for (const auto& r : e.rcpts) {
    out += "rcpt: ";
    core::percentEscapeTo(r.addr, core::keepPrintable, &out);
    out += ' ';
    out += rcptStateName(r.state);
    out += ' ';
    out += msText(r.updated_ms);
    out += ' ';
    core::percentEscapeTo(r.reply, core::keepPrintableOrSpace, &out);
    out += '\n';
  }
  line("client_ip", e.client_ip);
  line("helo", e.helo);
  line("user", e.user);
  line("listener", e.listener);
  line("session_id", e.session_id);
  line("message_id", e.message_id);
  line("smtputf8", e.smtputf8 ? "1" : "0");
  line("body_8bit", e.body_8bit ? "1" : "0");
  line("dsn", e.dsn ? "1" : "0");
  line("size", std::to_string(e.size));
  line("lease_owner", e.lease_owner);
  line("lease_until_ms", msText(e.lease_until_ms));
  out += '\n';
  return out;
}

namespace {
bool decodeRcpt(std::string_view v, QueueRcpt* r) {
  const size_t s1 = v.find(' ');
  if (s1 == std::string_view::npos) return false;
  const size_t s2 = v.find(' ', s1 + 1);
  if (s2 == std::string_view::npos) return false;
  const size_t s3 = v.find(' ', s2 + 1);
  if (s3 == std::string_view::npos) return false;
  if (!core::percentUnescape(v.substr(0, s1), core::keepPrintable, &r->addr) || r->addr.empty()) return false;
  if (!parseRcptState(v.substr(s1 + 1, s2 - s1 - 1), &r->state)) return false;
  if (!parseMs(v.substr(s2 + 1, s3 - s2 - 1), &r->updated_ms)) return false;
  return core::percentUnescape(v.substr(s3 + 1), core::keepPrintableOrSpace, &r->reply);
}
}  // namespace

bool decodeQueueMeta(std::string_view text, QueueEntry* out) {
  *out = QueueEntry{};
  size_t nl = text.find('\n');
  if (nl == std::string_view::npos || text.substr(0, nl) != kMagic) return false;
  text.remove_prefix(nl + 1);
  // One bit per single-valued key: each exactly once.
  enum : uint32_t {
    kId = 1u << 0,
    kCreated = 1u << 1,
    kNext = 1u << 2,
    kAttempts = 1u << 3,
    kFrom = 1u << 4,
    kClientIp = 1u << 5,
    kHelo = 1u << 6,
    kUser = 1u << 7,
    kListener = 1u << 8,
    kSession = 1u << 9,
    kMessageId = 1u << 10,
    kUtf8 = 1u << 11,
    k8bit = 1u << 12,
    kDsn = 1u << 13,
    kSize = 1u << 14,
    kLeaseOwner = 1u << 15,
    kLeaseUntil = 1u << 16,
    kAll = (1u << 17) - 1,
  };
  uint32_t seen = 0;
  while (!text.empty()) {
    nl = text.find('\n');
    if (nl == std::string_view::npos) return false;  // truncated
    const std::string_view l = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (l.empty()) {
      // The end: nothing may follow, every key was there, the id is one the store takes.
      return text.empty() && seen == kAll && !out->rcpts.empty() && validQueueId(out->id);
    }
    const size_t colon = l.find(": ");
    if (colon == std::string_view::npos) return false;
    const std::string_view k = l.substr(0, colon);
    const std::string_view raw = l.substr(colon + 2);
    if (k == "rcpt") {
      if (out->rcpts.size() >= kMaxRcpts) return false;
      QueueRcpt r;
      if (!decodeRcpt(raw, &r)) return false;
      out->rcpts.push_back(std::move(r));
      continue;
    }
    std::string v;
    if (!core::percentUnescape(raw, core::keepPrintableOrSpace, &v)) return false;
    uint32_t bit = 0;
    bool ok = true;
    uint64_t n = 0;
    if (k == "id") {
      bit = kId;
      out->id = std::move(v);
    } else if (k == "created_ms") {
      bit = kCreated;
      ok = parseMs(v, &out->created_ms);
    } else if (k == "next_ms") {
      bit = kNext;
      ok = parseMs(v, &out->next_ms);
    } else if (k == "attempts") {
      bit = kAttempts;
      ok = core::parseDecimal(v, UINT32_MAX, true, &n);
      out->attempts = static_cast<uint32_t>(n);
    } else if (k == "mail_from") {
      bit = kFrom;
      out->mail_from = std::move(v);
    } else if (k == "client_ip") {
      bit = kClientIp;
      out->client_ip = std::move(v);
    } else if (k == "helo") {
      bit = kHelo;
      out->helo = std::move(v);
    } else if (k == "user") {
      bit = kUser;
      out->user = std::move(v);
    } else if (k == "listener") {
      bit = kListener;
      out->listener = std::move(v);
    } else if (k == "session_id") {
      bit = kSession;
      out->session_id = std::move(v);
    } else if (k == "message_id") {
      bit = kMessageId;
      out->message_id = std::move(v);
    } else if (k == "smtputf8") {
      bit = kUtf8;
      ok = parseBool(v, &out->smtputf8);
    } else if (k == "body_8bit") {
      bit = k8bit;
      ok = parseBool(v, &out->body_8bit);
    } else if (k == "dsn") {
      bit = kDsn;
      ok = parseBool(v, &out->dsn);
    } else if (k == "size") {
      bit = kSize;
      ok = core::parseDecimal(v, UINT64_MAX, true, &out->size);
    } else if (k == "lease_owner") {
      bit = kLeaseOwner;
      out->lease_owner = std::move(v);
    } else if (k == "lease_until_ms") {
      bit = kLeaseUntil;
      ok = parseMs(v, &out->lease_until_ms);
    } else {
      return false;  // unknown key: rejected (see kMagic)
    }
    if (!ok || (seen & bit)) return false;
    seen |= bit;
  }
  return false;  // no empty line: truncated
}

}  // namespace mailgate::queue
