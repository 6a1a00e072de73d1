#include "gateway/admin/queue_api.h"

#include <algorithm>

namespace mailgate::admin {

namespace {
std::string printableText(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}

std::string pad(std::string s, size_t w) {
  if (s.size() < w) s.append(w - s.size(), ' ');
  return s;
}

// "3h12m", "45s", "-" for 0: how far `then` is from `now`.
std::string age(int64_t ms) {
  if (ms <= 0) return "0s";
  int64_t s = ms / 1000;
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
  if (s < 86400) return std::to_string(s / 3600) + "h" + std::to_string(s / 60 % 60) + "m";
  return std::to_string(s / 86400) + "d" + std::to_string(s / 3600 % 24) + "h";
}
}  // namespace

std::string queueEntryJson(const queue::QueueEntry& e, bool with_rcpts) {
  std::string out =
      "{\"id\":\"" + jsonEscape(e.id) + "\",\"created\":\"" + isoTime(e.created_ms) +
      "\",\"created_ms\":" + std::to_string(e.created_ms) + ",\"next_attempt\":\"" + isoTime(e.next_ms) +
      "\",\"next_ms\":" + std::to_string(e.next_ms) + ",\"attempts\":" + std::to_string(e.attempts) +
      ",\"mail_from\":\"" + jsonEscape(e.mail_from) +
      "\",\"pending\":" + std::to_string(e.count(queue::RcptState::kPending)) +
      ",\"delivered\":" + std::to_string(e.count(queue::RcptState::kDelivered)) +
      ",\"failed\":" + std::to_string(e.count(queue::RcptState::kFailed)) +
      ",\"reported\":" + std::to_string(e.count(queue::RcptState::kReported)) +
      ",\"size\":" + std::to_string(e.size) + ",\"dsn\":" + (e.dsn ? "true" : "false") + ",\"client_ip\":\"" +
      jsonEscape(e.client_ip) + "\",\"helo\":\"" + jsonEscape(e.helo) + "\",\"user\":\"" +
      jsonEscape(e.user) + "\",\"listener\":\"" + jsonEscape(e.listener) + "\",\"session\":\"" +
      jsonEscape(e.session_id) + "\",\"message_id\":\"" + jsonEscape(e.message_id) + "\",\"lease_owner\":\"" +
      jsonEscape(e.lease_owner) + "\",\"lease_until_ms\":" + std::to_string(e.lease_until_ms);
  if (with_rcpts) {
    out += ",\"rcpts\":[";
    for (size_t i = 0; i < e.rcpts.size(); ++i) {
      const queue::QueueRcpt& r = e.rcpts[i];
      out += std::string(i ? "," : "") + "{\"addr\":\"" + jsonEscape(r.addr) + "\",\"state\":\"" +
             std::string(queue::rcptStateName(r.state)) + "\",\"reply\":\"" + jsonEscape(r.reply) +
             "\",\"updated_ms\":" + std::to_string(r.updated_ms) + "}";
    }
    out += "]";
  }
  return out + "}";
}

std::string queueJson(const std::vector<queue::QueueEntry>& entries) {
  std::string out = "[";
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i) out += ",\n ";
    out += queueEntryJson(entries[i], true);
  }
  return out + "]\n";
}

std::string queueTable(const std::vector<queue::QueueEntry>& entries, int64_t now_ms) {
  size_t wid = 8, wf = 4;
  for (const auto& e : entries) {
    wid = std::max(wid, e.id.size());
    wf = std::max(wf, e.mail_from.size());
  }
  wid = std::min<size_t>(wid, 64);
  wf = std::min<size_t>(wf, 40);
  std::string out = pad("ID", wid) + "  " + pad("CREATED", 20) + "  " + pad("AGE", 7) + "  " +
                    pad("SIZE", 9) + "  " + pad("TRIES", 5) + "  " + pad("NEXT", 7) + "  " + pad("FROM", wf) +
                    "  OPEN  FIRST OPEN RECIPIENT: LAST REPLY\n";
  for (const auto& e : entries) {
    std::string first;
    for (const auto& r : e.rcpts)
      if (r.state == queue::RcptState::kPending || r.state == queue::RcptState::kFailed) {
        first = r.addr + ": " + r.reply;
        break;
      }
    const size_t open = e.count(queue::RcptState::kPending) + e.count(queue::RcptState::kFailed);
    out += pad(printableText(e.id), wid) + "  " + pad(isoTime(e.created_ms), 20) + "  " +
           pad(age(now_ms - e.created_ms), 7) + "  " + pad(std::to_string(e.size), 9) + "  " +
           pad(std::to_string(e.attempts), 5) + "  " +
           pad(e.next_ms > now_ms ? age(e.next_ms - now_ms) : "now", 7) + "  " +
           pad(printableText(e.mail_from), wf) + "  " + pad(std::to_string(open), 4) + "  " +
           printableText(first) + "\n";
  }
  return out;
}

bool parseQueueList(const HttpRequest& req, size_t* limit, std::string* error) {
  *limit = kQueueListDefault;
  if (const std::string* l = req.param("limit")) {
    size_t v = 0;
    bool ok = !l->empty() && l->size() <= 6;
    for (char c : *l) {
      if (c < '0' || c > '9') ok = false;
      if (ok) v = v * 10 + static_cast<size_t>(c - '0');
    }
    if (!ok || v < 1 || v > kQueueListMax) {
      *error = "limit: a number from 1 to " + std::to_string(kQueueListMax);
      return false;
    }
    *limit = v;
  }
  return true;
}

QueueRoute parseQueuePath(std::string_view path, std::string* id, bool* id_valid) {
  constexpr std::string_view kPrefix = "/queue/";
  if (path.substr(0, kPrefix.size()) != kPrefix) return QueueRoute::kNone;
  std::string_view rest = path.substr(kPrefix.size());
  QueueRoute route = QueueRoute::kEntry;
  for (auto [suffix, r] : {std::pair<std::string_view, QueueRoute>{"/retry", QueueRoute::kRetry},
                           std::pair<std::string_view, QueueRoute>{"/delete", QueueRoute::kDelete}}) {
    if (rest.size() > suffix.size() && rest.substr(rest.size() - suffix.size()) == suffix) {
      route = r;
      rest.remove_suffix(suffix.size());
      break;
    }
  }
  if (rest.empty()) return QueueRoute::kNone;
  id->assign(rest);
  *id_valid = queue::validQueueId(rest);
  return route;
}

}  // namespace mailgate::admin
