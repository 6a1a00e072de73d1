#include "gateway/admin/status_page.h"

#include <gtest/gtest.h>

#include <regex>

namespace mailgate::admin {
namespace {

using filters::policy::Ban;
using filters::policy::NetAddr;

NetAddr net(std::string_view s) {
  NetAddr n;
  EXPECT_TRUE(filters::policy::parseCidr(s, &n));
  return n;
}

StatusData sample() {
  StatusData d;
  d.version = "1.2.3";
  d.host = "gw<1>";
  d.now_unix = 1'800'000'100;
  d.started_unix = 1'800'000'000;
  d.generation = 3;
  d.last_reload_unix = 1'800'000'050;
  d.writable = true;
  d.listeners.push_back({"imap<script>", "imap", "127.0.0.1:143", 12, 2});
  d.backends.push_back({"node\"1", "10.0.0.1", true, "active", false, 0});
  d.backends.push_back({"node2", "10.0.0.2", false, "drain", true, 4});
  Ban b;
  b.net = net("192.0.2.0/24");
  b.expires_ms = 1'800'003'600'000;
  b.reason = "<img src=x onerror=alert(1)>";
  b.origin = "gw'1";
  d.bans.push_back(b);
  filters::policy::LimitedAddress l;
  l.addr = net("198.51.100.7");
  l.limit = "auth&fail";
  l.count = 9;
  d.limited.push_back(l);
  d.quarantine_configured = true;
  filters::QuarantineEntry e;
  e.id = "0123456789abcdef01234567";
  e.mail_from = "\"evil\"@example.com";
  e.rcpts = {"a@example.org", "b@example.org"};
  e.reason = "virus\x01";
  d.quarantine.push_back(e);
  return d;
}

TEST(StatusPage, HtmlEscape) {
  EXPECT_EQ(htmlEscape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(htmlEscape("a\tb\x01\x7f"), "a\tb&#xFFFD;&#xFFFD;");
  EXPECT_EQ(htmlEscape("héllo"), "héllo");
}

TEST(StatusPage, Uptime) {
  EXPECT_EQ(formatUptime(5), "5s");
  EXPECT_EQ(formatUptime(65), "1m 5s");
  EXPECT_EQ(formatUptime(3 * 3600 + 120), "3h 2m");
  EXPECT_EQ(formatUptime(2 * 86400 + 5 * 3600 + 7), "2d 5h");
  EXPECT_EQ(formatUptime(-3), "0s");
}

TEST(StatusPage, HtmlEscapesEveryValue) {
  const std::string html = renderStatusHtml(sample());
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(html.find("<1>"), std::string::npos);
  EXPECT_NE(html.find("data-listener=\"imap&lt;script&gt;\""), std::string::npos);
  EXPECT_NE(html.find("data-backend=\"node&quot;1\""), std::string::npos);
  EXPECT_NE(html.find("&lt;img src=x onerror=alert(1)&gt;"), std::string::npos);
  EXPECT_NE(html.find("gw&#39;1"), std::string::npos);
  EXPECT_NE(html.find("auth&amp;fail"), std::string::npos);
  EXPECT_NE(html.find("&quot;evil&quot;@example.com"), std::string::npos);
  EXPECT_NE(html.find("virus&#xFFFD;"), std::string::npos);
  // No outside asset: no src= attribute, no stylesheet link, no script element.
  EXPECT_FALSE(std::regex_search(html, std::regex("<[a-z]+[^>]*\\ssrc=")));
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
}

TEST(StatusPage, HtmlRowsAndActions) {
  const std::string html = renderStatusHtml(sample());
  EXPECT_NE(html.find("<b id=\"version\">1.2.3</b>"), std::string::npos);
  EXPECT_NE(html.find("<b id=\"generation\">3</b>"), std::string::npos);
  EXPECT_NE(html.find("<b id=\"uptime\">1m 40s</b>"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"n active\">2</td><td class=\"n accepted\">12</td>"), std::string::npos);
  // Actions: URL-encoded in the action, then entity-escaped in the attribute.
  EXPECT_NE(html.find("formaction=\"/bans/lift?net=192.0.2.0%2F24\""), std::string::npos);
  EXPECT_NE(html.find("formaction=\"/backends/drain?name=node%221&amp;state=drain\""), std::string::npos);
  EXPECT_NE(html.find("formaction=\"/backends/drain?name=node2&amp;state=active\">Undrain"),
            std::string::npos);
  EXPECT_NE(html.find("drain (this gateway)"), std::string::npos);
  EXPECT_NE(html.find("formaction=\"/quarantine/0123456789abcdef01234567/release\""), std::string::npos);
  EXPECT_NE(html.find("formaction=\"/quarantine/0123456789abcdef01234567/delete\""), std::string::npos);
  EXPECT_NE(html.find("name=\"token\""), std::string::npos);
  EXPECT_EQ(html.find(" disabled"), std::string::npos);
  EXPECT_NE(html.find("<form id=\"act\" method=\"post\""), std::string::npos);
}

TEST(StatusPage, ReadOnlyPageHasNoTokenFieldAndDisabledButtons) {
  StatusData d = sample();
  d.writable = false;
  const std::string html = renderStatusHtml(d);
  EXPECT_EQ(html.find("name=\"token\""), std::string::npos);
  EXPECT_NE(html.find("id=\"read-only\""), std::string::npos);
  EXPECT_NE(html.find("\" disabled>Lift</button>"), std::string::npos);
}

TEST(StatusPage, Json) {
  const std::string json = renderStatusJson(sample());
  EXPECT_NE(json.find("\"version\":\"1.2.3\""), std::string::npos);
  EXPECT_NE(json.find("\"generation\":3"), std::string::npos);
  EXPECT_NE(json.find("\"uptime_s\":100"), std::string::npos);
  EXPECT_NE(
      json.find("{\"name\":\"imap<script>\",\"protocol\":\"imap\",\"listen\":\"127.0.0.1:143\",\"active\":2,"
                "\"accepted\":12}"),
      std::string::npos);
  EXPECT_NE(json.find("\"name\":\"node\\\"1\""), std::string::npos);
  EXPECT_NE(json.find("\"state\":\"drain\",\"local_override\":true"), std::string::npos);
  EXPECT_NE(json.find("{\"addr\":\"198.51.100.7\",\"limit\":\"auth&fail\",\"count\":9"), std::string::npos);
  EXPECT_NE(json.find("\"net\":\"192.0.2.0/24\""), std::string::npos);
  EXPECT_NE(json.find("\"reason\":\"virus\\u0001\""), std::string::npos);
  EXPECT_NE(json.find("\"last_reload\":\"2027-01-15T08:00:50Z\""), std::string::npos);
}

TEST(StatusPage, QueueSection) {
  StatusData d = sample();
  EXPECT_NE(renderStatusHtml(d).find("No exception queue (queue.store) is configured."), std::string::npos);
  d.queue_configured = true;
  d.queue_entries = 12;
  d.queue_oldest_created_ms = (d.now_unix - 3 * 3600 - 120) * 1000;
  queue::QueueEntry e;
  e.id = "s1-<1>";
  e.created_ms = d.queue_oldest_created_ms;
  e.next_ms = (d.now_unix + 60) * 1000;
  e.attempts = 4;
  e.mail_from = "<carol@example.com>";
  e.rcpts = {{"<dave@example.org>", queue::RcptState::kDelivered, "", 0},
             {"<frank@example.org>", queue::RcptState::kPending, "", 0}};
  d.queue.push_back(e);
  const std::string html = renderStatusHtml(d);
  EXPECT_NE(html.find("<b id=\"queue-entries\">12</b>"), std::string::npos);
  EXPECT_NE(html.find("<b id=\"queue-oldest\">3h 2m</b>"), std::string::npos);
  EXPECT_NE(html.find("data-queue=\"s1-&lt;1&gt;\""), std::string::npos);
  EXPECT_NE(html.find("<td>&lt;frank@example.org&gt;</td>"), std::string::npos);  // open ones only
  EXPECT_NE(html.find("formaction=\"/queue/s1-%3C1%3E/retry\""), std::string::npos);
  EXPECT_NE(html.find("formaction=\"/queue/s1-%3C1%3E/delete\""), std::string::npos);
  EXPECT_NE(html.find("The 10 oldest only."), std::string::npos);
  const std::string json = renderStatusJson(d);
  EXPECT_NE(json.find("\"queue\":{\"configured\":true,\"error\":null,\"entries\":12"), std::string::npos);
  EXPECT_NE(json.find("\"id\":\"s1-<1>\""), std::string::npos);
  d.queue_error = "the database is down";
  EXPECT_NE(renderStatusHtml(d).find("The queue cannot be read: the database is down"), std::string::npos);
}

TEST(StatusPage, ActionPage) {
  const std::string html = renderActionPage(401, "Unauthorized", "wrong <token>");
  EXPECT_NE(html.find("<p id=\"message\">wrong &lt;token&gt;</p>"), std::string::npos);
  EXPECT_NE(html.find("href=\"/status\""), std::string::npos);
}

}  // namespace
}  // namespace mailgate::admin
