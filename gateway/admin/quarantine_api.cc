#include "gateway/admin/quarantine_api.h"

#include <algorithm>

namespace mailgate::admin {

namespace {
std::string jsonList(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ",\"" : "\"") + jsonEscape(v[i]) + "\"";
  return out + "]";
}

}  // namespace

std::string quarantineEntryJson(const filters::QuarantineEntry& e) {
  return "{\"id\":\"" + jsonEscape(e.id) + "\",\"created\":\"" + isoTime(e.created_ms) +
         "\",\"created_ms\":" + std::to_string(e.created_ms) + ",\"reason\":\"" + jsonEscape(e.reason) +
         "\",\"filter\":\"" + jsonEscape(e.filter) + "\",\"ref\":\"" + jsonEscape(e.ref) +
         "\",\"mail_from\":\"" + jsonEscape(e.mail_from) + "\",\"rcpts\":" + jsonList(e.rcpts) +
         ",\"delivered\":" + jsonList(e.delivered) + ",\"client_ip\":\"" + jsonEscape(e.client_ip) +
         "\",\"helo\":\"" + jsonEscape(e.helo) + "\",\"user\":\"" + jsonEscape(e.user) +
         "\",\"listener\":\"" + jsonEscape(e.listener) + "\",\"session\":\"" + jsonEscape(e.session_id) +
         "\",\"size\":" + std::to_string(e.size) + "}";
}

std::string quarantineJson(const std::vector<filters::QuarantineEntry>& entries) {
  std::string out = "[";
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i) out += ",\n ";
    out += quarantineEntryJson(entries[i]);
  }
  return out + "]\n";
}

std::string quarantineTable(const std::vector<filters::QuarantineEntry>& entries) {
  const auto pad = padRight;
  size_t wf = 4, wfl = 6;
  for (const auto& e : entries) {
    wf = std::max(wf, e.mail_from.size());
    wfl = std::max(wfl, e.filter.size());
  }
  wf = std::min<size_t>(wf, 40);
  std::string out = pad("ID", 24) + "  " + pad("CREATED", 20) + "  " + pad("SIZE", 9) + "  " +
                    pad("FILTER", wfl) + "  " + pad("FROM", wf) + "  RCPTS  REASON\n";
  for (const auto& e : entries) {
    out += e.id + "  " + pad(isoTime(e.created_ms), 20) + "  " + pad(std::to_string(e.size), 9) + "  " +
           pad(printableText(e.filter), wfl) + "  " + pad(printableText(e.mail_from), wf) + "  " +
           pad(std::to_string(e.rcpts.size()), 5) + "  " + printableText(e.reason) + "\n";
  }
  return out;
}

std::string releaseJson(const std::string& id, const session::ReleaseOutcome& r) {
  std::string out = "{\"id\":\"" + jsonEscape(id) + "\",\"released\":" +
                    (r.status == session::ReleaseOutcome::Status::kReleased ? "true" : "false") +
                    ",\"delivered\":" + jsonList(r.delivered) + ",\"failed\":[";
  for (size_t i = 0; i < r.failed.size(); ++i)
    out += std::string(i ? "," : "") + "{\"rcpt\":\"" + jsonEscape(r.failed[i].first) + "\",\"error\":\"" +
           jsonEscape(r.failed[i].second) + "\"}";
  return out + "]}\n";
}

bool parseQuarantineList(const HttpRequest& req, filters::QuarantineFilter* filter, size_t* limit,
                         std::string* error) {
  if (!listLimit(req, kQuarantineListDefault, kQuarantineListMax, limit, error)) return false;
  if (const std::string* r = req.param("rcpt")) filter->rcpt = *r;
  if (const std::string* f = req.param("from")) filter->from = *f;
  return true;
}

bool parseQuarantinePath(std::string_view path, std::string* id, bool* release) {
  constexpr std::string_view kPrefix = "/quarantine/";
  if (path.substr(0, kPrefix.size()) != kPrefix) return false;
  std::string_view rest = path.substr(kPrefix.size());
  *release = false;
  constexpr std::string_view kRelease = "/release";
  if (rest.size() > kRelease.size() && rest.substr(rest.size() - kRelease.size()) == kRelease) {
    *release = true;
    rest.remove_suffix(kRelease.size());
  }
  if (!filters::validQuarantineId(rest)) return false;
  id->assign(rest);
  return true;
}

}  // namespace mailgate::admin
