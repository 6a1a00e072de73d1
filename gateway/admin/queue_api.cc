#include "gateway/admin/queue_api.h"

#include <algorithm>

namespace mailgate::admin {

namespace {
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
  std::string out = padRight("ID", wid) + "  " + padRight("CREATED", 20) + "  " + padRight("AGE", 7) + "  " +
                    padRight("SIZE", 9) + "  " + padRight("TRIES", 5) + "  " + padRight("NEXT", 7) + "  " + padRight("FROM", wf) +
                    "  OPEN  FIRST OPEN RECIPIENT: LAST REPLY\n";
  for (const auto& e : entries) {
    std::string first;
    for (const auto& r : e.rcpts)
      if (r.state == queue::RcptState::kPending || r.state == queue::RcptState::kFailed) {
        first = r.addr + ": " + r.reply;
        break;
      }
    const size_t open = e.count(queue::RcptState::kPending) + e.count(queue::RcptState::kFailed);
    out += padRight(printableText(e.id), wid) + "  " + padRight(isoTime(e.created_ms), 20) + "  " +
           padRight(age(now_ms - e.created_ms), 7) + "  " + padRight(std::to_string(e.size), 9) + "  " +
           padRight(std::to_string(e.attempts), 5) + "  " +
           padRight(e.next_ms > now_ms ? age(e.next_ms - now_ms) : "now", 7) + "  " +
           padRight(printableText(e.mail_from), wf) + "  " + padRight(std::to_string(open), 4) + "  " +
           printableText(first) + "\n";
  }
  return out;
}

bool parseQueueList(const HttpRequest& req, size_t* limit, std::string* error) {
  return listLimit(req, kQueueListDefault, kQueueListMax, limit, error);
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
