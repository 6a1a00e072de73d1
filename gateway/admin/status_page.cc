#include "gateway/admin/status_page.h"

#include <algorithm>

#include "gateway/admin/bans_api.h"
#include "gateway/admin/quarantine_api.h"
#include "gateway/admin/queue_api.h"

namespace mailgate::admin {

namespace {

constexpr std::string_view kStyle = R"css(
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#1d2329;background:#fafbfc}
header{display:flex;flex-wrap:wrap;gap:.4em 2em;align-items:baseline;border-bottom:2px solid #2f6f9f;padding:.6em 0}
h1{font-size:1.4em;margin:0;color:#2f6f9f}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #dde3e8;vertical-align:top}
th{background:#eef2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#17752f;font-weight:600}.down{color:#b3261e;font-weight:600}
.drain{color:#9a5b00;font-weight:600}.muted{color:#68727d}
#auth{margin:1em 0;padding:.6em;background:#fff;border:1px solid #dde3e8}
.ro{color:#9a5b00}button{font:inherit;padding:.1em .7em;cursor:pointer}
code{font-size:.95em}
)css";

std::string esc(std::string_view s) { return htmlEscape(s); }

std::string num(int64_t v) { return std::to_string(v); }
std::string num(uint64_t v) { return std::to_string(v); }

std::string when(int64_t unix_s) { return unix_s > 0 ? isoTime(unix_s * 1000) : "never"; }

// A button of the page's one form (id "act"), posting to `action` (already encoded).
std::string button(const StatusData& d, const std::string& action, std::string_view label,
                   std::string_view name) {
  return "<button type=\"submit\" form=\"act\" name=\"" + esc(name) + "\" formaction=\"" + esc(action) +
         "\"" + (d.writable ? "" : " disabled") + ">" + esc(label) + "</button>";
}

std::string list(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out;
}

std::string jsonStr(std::string_view s) { return "\"" + jsonEscape(s) + "\""; }

}  // namespace

std::string htmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        if ((c < 0x20 && c != '\t') || c == 0x7f)
          out += "&#xFFFD;";
        else
          out.push_back(ch);
    }
  }
  return out;
}

std::string formatUptime(int64_t s) {
  if (s < 0) s = 0;
  const int64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
  if (d > 0) return num(d) + "d " + num(h) + "h";
  if (h > 0) return num(h) + "h " + num(m) + "m";
  if (m > 0) return num(m) + "m " + num(sec) + "s";
  return num(sec) + "s";
}

std::string renderStatusHtml(const StatusData& d) {
  std::string o;
  o.reserve(16384);
  o += "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
       "<title>mailgate status: " +
       esc(d.host) + "</title><style>";
  o += kStyle;
  o += "</style></head><body>\n<header><h1>mailgate</h1>";
  o += "<span>version <b id=\"version\">" + esc(d.version) + "</b></span>";
  o += "<span>host <b>" + esc(d.host) + "</b></span>";
  o += "<span>up <b id=\"uptime\">" + esc(formatUptime(d.now_unix - d.started_unix)) + "</b> (since " +
       esc(when(d.started_unix)) + ")</span>";
  o += "<span>config generation <b id=\"generation\">" + num(d.generation) + "</b></span>";
  o += "<span>last reload <b id=\"last-reload\" class=\"" + std::string(d.last_reload_ok ? "up" : "down") +
       "\">" +
       (d.last_reload_unix == 0 ? std::string("none")
                                : esc(when(d.last_reload_unix)) + (d.last_reload_ok ? " ok" : " failed")) +
       "</b>" + (d.reload_failures ? " (" + num(d.reload_failures) + " failed)" : std::string()) + "</span>";
  o += "<span class=\"muted\">" + esc(when(d.now_unix)) + "</span></header>\n";

  // The one form every button posts; the token field and the return marker belong to it.
  o += "<form id=\"act\" method=\"post\" action=\"/status\"></form>\n<section id=\"auth\">";
  if (d.writable)
    o += "<label>Admin token <input form=\"act\" type=\"password\" name=\"token\" id=\"token\" "
         "autocomplete=\"off\" size=\"40\"></label> <span class=\"muted\">needed by the buttons below</span>"
         "<input form=\"act\" type=\"hidden\" name=\"return\" value=\"status\">";
  else
    o += "<p class=\"ro\" id=\"read-only\">Read-only: no <code>admin.token_file</code> is configured, so "
         "nothing can be changed here.</p>";
  o += "</section>\n";

  o += "<section id=\"listeners\"><h2>Listeners</h2><table><thead><tr><th>Name</th><th>Protocol</th>"
       "<th>Listen</th><th>Active sessions</th><th>Accepted</th></tr></thead><tbody>\n";
  for (const auto& l : d.listeners)
    o += "<tr data-listener=\"" + esc(l.name) + "\"><td>" + esc(l.name) + "</td><td>" + esc(l.protocol) +
         "</td><td>" + esc(l.listen) + "</td><td class=\"n active\">" + num(l.active) +
         "</td><td class=\"n accepted\">" + num(l.accepted) + "</td></tr>\n";
  o += "</tbody></table></section>\n";

  o += "<section id=\"backends\"><h2>Backends</h2><table><thead><tr><th>Name</th><th>Host</th><th>Health</th>"
       "<th>State</th><th>Failed checks</th><th></th></tr></thead><tbody>\n";
  for (const auto& b : d.backends) {
    const bool active = b.state == "active";
    const std::string action =
        "/backends/drain?name=" + percentEncode(b.name) + "&state=" + (active ? "drain" : "active");
    o += "<tr data-backend=\"" + esc(b.name) + "\"><td>" + esc(b.name) + "</td><td>" + esc(b.host) +
         "</td><td class=\"health " + (b.up ? "up\">up" : "down\">down") + "</td><td class=\"state" +
         (active ? "" : " drain") + "\">" + esc(b.state) + (b.local_override ? " (this gateway)" : "") +
         "</td><td class=\"n\">" + num(b.checks_failed) + "</td><td>" +
         button(d, action, active ? "Drain" : "Undrain", active ? "drain" : "undrain") + "</td></tr>\n";
  }
  o += "</tbody></table>";
  if (!d.routes.empty()) {
    o += "<h2>Routes (failover order)</h2><table id=\"routes\"><thead><tr><th>Key</th><th>Primary</th>"
         "<th>Secondary</th><th>From</th></tr></thead><tbody>\n";
    for (const auto& r : d.routes)
      o += "<tr><td>" + esc(r.key) + "</td><td>" + esc(r.primary) + "</td><td>" + esc(r.secondary) +
           "</td><td>" + esc(r.source) + "</td></tr>\n";
    o += "</tbody></table>";
    if (d.routes_truncated)
      o += "<p class=\"muted\">The first " + num(uint64_t{kStatusRoutes}) + " only.</p>";
  }
  o += "</section>\n";

  o += "<section id=\"limited\"><h2>Most limited addresses</h2><table><thead><tr><th>Address</th>"
       "<th>Last limit</th><th>Times</th><th>Last</th></tr></thead><tbody>\n";
  for (const auto& l : d.limited)
    o += "<tr data-limited=\"" + esc(l.addr.text()) + "\"><td>" + esc(l.addr.text()) + "</td><td>" +
         esc(l.limit) + "</td><td class=\"n\">" + num(l.count) + "</td><td>" + esc(isoTime(l.last_ms)) +
         "</td></tr>\n";
  if (d.limited.empty()) o += "<tr><td colspan=\"4\" class=\"muted\">none</td></tr>\n";
  o += "</tbody></table></section>\n";

  o += "<section id=\"bans\"><h2>Bans</h2><table><thead><tr><th>Network</th><th>Expires</th><th>Level</th>"
       "<th>Origin</th><th>Reason</th><th></th></tr></thead><tbody>\n";
  for (const auto& b : d.bans) {
    const std::string net = b.net.text();
    o += "<tr data-ban=\"" + esc(net) + "\"><td>" + esc(net) + "</td><td>" + esc(isoTime(b.expires_ms)) +
         "</td><td class=\"n\">" + num(uint64_t{b.level}) + "</td><td>" + esc(b.origin) + "</td><td>" +
         esc(b.reason) + "</td><td>" + button(d, "/bans/lift?net=" + percentEncode(net), "Lift", "lift") +
         "</td></tr>\n";
  }
  if (d.bans.empty()) o += "<tr><td colspan=\"6\" class=\"muted\">none</td></tr>\n";
  o += "</tbody></table>";
  if (d.bans_truncated) o += "<p class=\"muted\">The first " + num(uint64_t{kStatusBans}) + " only.</p>";
  o += "</section>\n";

  o += "<section id=\"quarantine\"><h2>Quarantine (newest " + num(uint64_t{kStatusQuarantine}) + ")</h2>";
  if (!d.quarantine_configured) {
    o += "<p class=\"muted\">No quarantine store (hooks.quarantine) is configured.</p>";
  } else if (!d.quarantine_error.empty()) {
    o += "<p class=\"down\">The store cannot be read: " + esc(d.quarantine_error) + "</p>";
  } else {
    o += "<table><thead><tr><th>Id</th><th>Created</th><th>Size</th><th>From</th><th>Recipients</th>"
         "<th>Filter</th><th>Reason</th><th></th></tr></thead><tbody>\n";
    for (const auto& e : d.quarantine)
      o += "<tr data-quarantine=\"" + esc(e.id) + "\"><td><code>" + esc(e.id) + "</code></td><td>" +
           esc(isoTime(e.created_ms)) + "</td><td class=\"n\">" + num(uint64_t{e.size}) + "</td><td>" +
           esc(e.mail_from) + "</td><td>" + esc(list(e.rcpts)) + "</td><td>" + esc(e.filter) + "</td><td>" +
           esc(e.reason) + "</td><td>" +
           button(d, "/quarantine/" + percentEncode(e.id) + "/release", "Release", "release") + " " +
           button(d, "/quarantine/" + percentEncode(e.id) + "/delete", "Delete", "delete") + "</td></tr>\n";
    if (d.quarantine.empty()) o += "<tr><td colspan=\"8\" class=\"muted\">empty</td></tr>\n";
    o += "</tbody></table>";
  }
  o += "</section>\n";

  o += "<section id=\"queue\"><h2>Exception queue</h2>";
  if (!d.queue_configured) {
    o += "<p class=\"muted\">No exception queue (queue.store) is configured.</p>";
  } else if (!d.queue_error.empty()) {
    o += "<p class=\"down\">The queue cannot be read: " + esc(d.queue_error) + "</p>";
  } else {
    const int64_t now_ms = d.now_unix * 1000;
    o += "<p>Entries: <b id=\"queue-entries\">" + num(d.queue_entries) + "</b>; oldest: <b id=\"queue-oldest\">" +
         (d.queue_oldest_created_ms > 0 ? esc(formatUptime(std::max<int64_t>(0, now_ms - d.queue_oldest_created_ms) / 1000))
                                        : std::string("none")) +
         "</b>.</p>";
    o += "<table><thead><tr><th>Id</th><th>Created</th><th>From</th><th>Open recipients</th><th>Attempts</th>"
         "<th>Next attempt</th><th></th></tr></thead><tbody>\n";
    for (const auto& e : d.queue) {
      std::vector<std::string> open;
      for (const auto& r : e.rcpts)
        if (r.state == queue::RcptState::kPending || r.state == queue::RcptState::kFailed) open.push_back(r.addr);
      o += "<tr data-queue=\"" + esc(e.id) + "\"><td><code>" + esc(e.id) + "</code></td><td>" +
           esc(isoTime(e.created_ms)) + "</td><td>" + esc(e.mail_from) + "</td><td>" + esc(list(open)) +
           "</td><td class=\"n\">" + num(uint64_t{e.attempts}) + "</td><td>" +
           (e.next_ms > now_ms ? esc(isoTime(e.next_ms)) : std::string("now")) + "</td><td>" +
           button(d, "/queue/" + percentEncode(e.id) + "/retry", "Retry now", "retry") + " " +
           button(d, "/queue/" + percentEncode(e.id) + "/delete", "Delete", "delete") + "</td></tr>\n";
    }
    if (d.queue.empty()) o += "<tr><td colspan=\"7\" class=\"muted\">empty</td></tr>\n";
    o += "</tbody></table>";
    if (d.queue_entries > d.queue.size())
      o += "<p class=\"muted\">The " + num(uint64_t{kStatusQueue}) + " oldest only.</p>";
  }
  o += "</section>\n<p class=\"muted\">Also: <a href=\"/status.json\">/status.json</a>, "
       "<a href=\"/metrics\">/metrics</a>, <a href=\"/bans\">/bans</a>, <a "
       "href=\"/quarantine\">/quarantine</a>, <a href=\"/queue\">/queue</a>.</p>\n"
       "</body></html>\n";
  return o;
}

std::string renderStatusJson(const StatusData& d) {
  std::string o = "{\"version\":" + jsonStr(d.version) + ",\"host\":" + jsonStr(d.host) +
                  ",\"now\":" + jsonStr(isoTime(d.now_unix * 1000)) +
                  ",\"started\":" + jsonStr(isoTime(d.started_unix * 1000)) +
                  ",\"uptime_s\":" + num(d.now_unix - d.started_unix) +
                  ",\"config\":{\"generation\":" + num(d.generation) +
                  ",\"last_reload_ok\":" + (d.last_reload_ok ? "true" : "false") + ",\"last_reload\":" +
                  (d.last_reload_unix ? jsonStr(isoTime(d.last_reload_unix * 1000)) : std::string("null")) +
                  ",\"reload_failures\":" + num(d.reload_failures) +
                  "},\"writable\":" + (d.writable ? "true" : "false") +
                  ",\"directory\":" + jsonStr(d.directory) + ",\"drain_via\":" + jsonStr(d.drain_via) +
                  ",\n\"listeners\":[";
  for (size_t i = 0; i < d.listeners.size(); ++i) {
    const auto& l = d.listeners[i];
    o += std::string(i ? "," : "") + "{\"name\":" + jsonStr(l.name) + ",\"protocol\":" + jsonStr(l.protocol) +
         ",\"listen\":" + jsonStr(l.listen) + ",\"active\":" + num(l.active) +
         ",\"accepted\":" + num(l.accepted) + "}";
  }
  o += "],\n\"backends\":[";
  for (size_t i = 0; i < d.backends.size(); ++i) {
    const auto& b = d.backends[i];
    o += std::string(i ? "," : "") + "{\"name\":" + jsonStr(b.name) + ",\"host\":" + jsonStr(b.host) +
         ",\"up\":" + (b.up ? "true" : "false") + ",\"state\":" + jsonStr(b.state) +
         ",\"local_override\":" + (b.local_override ? "true" : "false") +
         ",\"checks_failed\":" + num(b.checks_failed) + "}";
  }
  o += "],\n\"routes\":[";
  for (size_t i = 0; i < d.routes.size(); ++i) {
    const auto& r = d.routes[i];
    o += std::string(i ? "," : "") + "{\"key\":" + jsonStr(r.key) + ",\"primary\":" + jsonStr(r.primary) +
         ",\"secondary\":" + jsonStr(r.secondary) + ",\"source\":" + jsonStr(r.source) + "}";
  }
  o += std::string("],\"routes_truncated\":") + (d.routes_truncated ? "true" : "false") + ",\n\"limited\":[";
  for (size_t i = 0; i < d.limited.size(); ++i) {
    const auto& l = d.limited[i];
    o += std::string(i ? "," : "") + "{\"addr\":" + jsonStr(l.addr.text()) +
         ",\"limit\":" + jsonStr(l.limit) + ",\"count\":" + num(l.count) +
         ",\"last\":" + jsonStr(isoTime(l.last_ms)) + "}";
  }
  o += "],\n\"bans\":[";
  for (size_t i = 0; i < d.bans.size(); ++i) o += (i ? "," : "") + banJson(d.bans[i]);
  o += std::string("],\"bans_truncated\":") + (d.bans_truncated ? "true" : "false") +
       ",\n\"quarantine\":{\"configured\":" + (d.quarantine_configured ? "true" : "false") +
       ",\"error\":" + (d.quarantine_error.empty() ? std::string("null") : jsonStr(d.quarantine_error)) +
       ",\"entries\":[";
  for (size_t i = 0; i < d.quarantine.size(); ++i) o += (i ? "," : "") + quarantineEntryJson(d.quarantine[i]);
  o += std::string("]},\n\"queue\":{\"configured\":") + (d.queue_configured ? "true" : "false") +
       ",\"error\":" + (d.queue_error.empty() ? std::string("null") : jsonStr(d.queue_error)) +
       ",\"entries\":" + num(d.queue_entries) + ",\"oldest_created_ms\":" + num(d.queue_oldest_created_ms) +
       ",\"oldest\":[";
  for (size_t i = 0; i < d.queue.size(); ++i) o += (i ? "," : "") + queueEntryJson(d.queue[i], true);
  return o + "]}}\n";
}

std::string renderActionPage(int code, std::string_view title, std::string_view message) {
  return "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + esc(title) +
         "</title><style>body{font:14px/1.4 system-ui,sans-serif;margin:2em}</style></head><body><h1>" +
         num(int64_t{code}) + " " + esc(title) + "</h1><p id=\"message\">" + esc(message) +
         "</p><p><a href=\"/status\">Back to the status page</a></p></body></html>\n";
}

}  // namespace mailgate::admin
