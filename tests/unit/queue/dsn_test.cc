#include "gateway/queue/dsn.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace mailgate::queue {
namespace {

constexpr int64_t kNow = 1700000000000;  // Tue, 14 Nov 2023 22:13:20 +0000

QueueEntry original() {
  QueueEntry e;
  e.id = "s9f8e7-3";
  e.created_ms = kNow - 3600000;
  e.mail_from = "<alice@example.org>";
  e.rcpts.push_back({"<dave@example.com>", RcptState::kDelivered, "250 2.0.0 ok", kNow - 3600000});
  e.rcpts.push_back({"<frank@example.com>", RcptState::kFailed, "550 5.1.1 <frank@example.com> User unknown",
                     kNow - 60000});
  e.rcpts.push_back({"<gina@example.com>", RcptState::kFailed, "451 4.2.0 mailbox busy", kNow - 1000});
  e.message_id = "<orig-1@example.org>";
  e.session_id = "s9f8e7";
  return e;
}

struct Part {
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

struct Parsed {
  std::map<std::string, std::string> headers;
  std::vector<Part> parts;
  bool ok = false;
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Header fields up to the empty line (unfolded).
std::map<std::string, std::string> parseHeaders(const std::string& text, size_t* end) {
  std::map<std::string, std::string> out;
  size_t i = 0;
  std::string last;
  while (i < text.size()) {
    const size_t nl = text.find("\r\n", i);
    const std::string l = text.substr(i, nl - i);
    i = nl == std::string::npos ? text.size() : nl + 2;
    if (l.empty()) break;
    if (l[0] == ' ' || l[0] == '\t') {
      out[last] += l;
      continue;
    }
    const size_t colon = l.find(':');
    if (colon == std::string::npos) continue;
    last = lower(l.substr(0, colon));
    out[last] = l.substr(colon + 1 + (colon + 1 < l.size() && l[colon + 1] == ' '));
  }
  *end = i;
  return out;
}

Parsed parse(const std::string& msg) {
  Parsed p;
  size_t body_at = 0;
  p.headers = parseHeaders(msg, &body_at);
  const std::string ct = p.headers["content-type"];
  const size_t b = ct.find("boundary=\"");
  if (b == std::string::npos) return p;
  const std::string boundary = ct.substr(b + 10, ct.find('"', b + 10) - b - 10);
  const std::string delim = "\r\n--" + boundary;
  const std::string body = msg.substr(body_at);
  size_t at = body.find(delim);
  while (at != std::string::npos) {
    size_t start = at + delim.size();
    if (body.compare(start, 2, "--") == 0) {
      p.ok = body.compare(start + 2, std::string::npos, "\r\n") == 0;
      return p;
    }
    if (body.compare(start, 2, "\r\n") != 0) return p;
    start += 2;
    const size_t next = body.find(delim, start);
    if (next == std::string::npos) return p;
    const std::string raw = body.substr(start, next - start);
    Part part;
    size_t pb = 0;
    part.headers = parseHeaders(raw, &pb);
    part.body = raw.substr(pb);
    p.parts.push_back(std::move(part));
    at = next;
  }
  return p;
}

DsnInput input(const QueueEntry& e) {
  DsnInput in;
  in.reporting_mta = "mx1.example.net";
  in.original = &e;
  in.failed.push_back({"<frank@example.com>", "550 5.1.1 <frank@example.com> User unknown", false});
  in.failed.push_back({"<gina@example.com>", "451 4.2.0 mailbox busy", true});
  in.original_headers =
      "Received: from client (client [192.0.2.1])\r\n\tby mx1 with ESMTP\r\nFrom: Alice "
      "<alice@example.org>\r\n"
      "To: frank@example.com, gina@example.com\r\nSubject: hello\r\nMessage-ID: <orig-1@example.org>\r\n\r\n"
      "the body must not be here\r\n";
  in.now_ms = kNow;
  return in;
}

void expectWellFormed(const std::string& msg) {
  size_t line_start = 0;
  for (size_t i = 0; i < msg.size(); ++i) {
    const char c = msg[i];
    ASSERT_NE(c, '\0') << i;
    if (c == '\r') {
      ASSERT_TRUE(i + 1 < msg.size() && msg[i + 1] == '\n') << "bare CR at " << i;
    }
    if (c == '\n') {
      ASSERT_TRUE(i > 0 && msg[i - 1] == '\r') << "bare LF at " << i;
      EXPECT_LE(i - 1 - line_start, 998u) << "line at " << line_start;
      line_start = i + 1;
    }
  }
  ASSERT_GE(msg.size(), 2u);
  EXPECT_EQ(msg.substr(msg.size() - 2), "\r\n");
}

TEST(Dsn, Structure) {
  const QueueEntry e = original();
  const std::string msg = buildDsn(input(e));
  expectWellFormed(msg);
  const Parsed p = parse(msg);
  ASSERT_TRUE(p.ok) << msg;
  auto h = p.headers;
  EXPECT_EQ(h["from"], "\"Mail Delivery System\" <MAILER-DAEMON@mx1.example.net>");
  EXPECT_EQ(h["to"], "<alice@example.org>");
  EXPECT_EQ(h["subject"], "Undelivered Mail Returned to Sender");
  EXPECT_EQ(h["date"], "Tue, 14 Nov 2023 22:13:20 +0000");
  EXPECT_EQ(h["auto-submitted"], "auto-replied");
  EXPECT_EQ(h["mime-version"], "1.0");
  EXPECT_EQ(h["in-reply-to"], "<orig-1@example.org>");
  EXPECT_EQ(h["message-id"].front(), '<');
  EXPECT_NE(h["message-id"].find("@mx1.example.net>"), std::string::npos);
  EXPECT_EQ(h["content-type"].rfind("multipart/report; report-type=delivery-status;", 0), 0u)
      << h["content-type"];

  ASSERT_EQ(p.parts.size(), 3u);
  EXPECT_EQ(p.parts[0].headers.at("content-type"), "text/plain; charset=us-ascii");
  EXPECT_NE(p.parts[0].body.find("<frank@example.com>: 550 5.1.1"), std::string::npos) << p.parts[0].body;
  EXPECT_EQ(p.parts[1].headers.at("content-type"), "message/delivery-status");
  EXPECT_EQ(p.parts[2].headers.at("content-type"), "text/rfc822-headers");

  // message/delivery-status: per-message fields, then one group per recipient.
  const std::string& ds = p.parts[1].body;
  std::vector<std::map<std::string, std::string>> groups;
  for (size_t at = 0; at < ds.size();) {
    size_t end = 0;
    auto g = parseHeaders(ds.substr(at), &end);
    if (g.empty()) break;
    groups.push_back(g);
    at += end;
  }
  ASSERT_EQ(groups.size(), 3u) << ds;
  EXPECT_EQ(groups[0]["reporting-mta"], "dns; mx1.example.net");
  EXPECT_EQ(groups[0]["arrival-date"], "Tue, 14 Nov 2023 21:13:20 +0000");
  EXPECT_EQ(groups[1]["final-recipient"], "rfc822; frank@example.com");
  EXPECT_EQ(groups[1]["action"], "failed");
  EXPECT_EQ(groups[1]["status"], "5.1.1");
  EXPECT_EQ(groups[1]["diagnostic-code"], "smtp; 550 5.1.1 <frank@example.com> User unknown");
  EXPECT_EQ(groups[1]["last-attempt-date"], "Tue, 14 Nov 2023 22:12:20 +0000");
  EXPECT_EQ(groups[2]["final-recipient"], "rfc822; gina@example.com");
  EXPECT_EQ(groups[2]["action"], "failed");
  EXPECT_EQ(groups[2]["status"], "4.4.7");  // expired
  EXPECT_EQ(groups[2]["diagnostic-code"], "smtp; 451 4.2.0 mailbox busy");

  // The original header section, and nothing of the body.
  const std::string& oh = p.parts[2].body;
  EXPECT_NE(oh.find("Subject: hello\r\n"), std::string::npos);
  EXPECT_NE(oh.find("\r\n\tby mx1 with ESMTP\r\n"), std::string::npos);
  EXPECT_EQ(oh.find("the body"), std::string::npos);
}

TEST(Dsn, Sample) {
  const QueueEntry e = original();
  if (std::getenv("DSN_PRINT")) std::fputs(buildDsn(input(e)).c_str(), stderr);
}

TEST(Dsn, StatusCodes) {
  const QueueEntry e = original();
  DsnInput in = input(e);
  in.failed = {{"<a@x>", "550 no enhanced code", false}, {"<b@x>", "554-5.7.1 multi", false},
               {"<c@x>", "connection refused", false},   {"<d@x>", "452 4.2.2 full", false},
               {"<e@x>", "550 5.1.1000 bad", false},     {"<f@x>", "", false}};
  const std::string msg = buildDsn(in);
  const Parsed p = parse(msg);
  ASSERT_TRUE(p.ok && p.parts.size() == 3);
  const std::string& ds = p.parts[1].body;
  EXPECT_NE(ds.find("Final-Recipient: rfc822; a@x\r\nAction: failed\r\nStatus: 5.0.0\r\n"), std::string::npos)
      << ds;
  EXPECT_NE(ds.find("Status: 5.7.1\r\n"), std::string::npos);
  EXPECT_NE(ds.find("Diagnostic-Code: X-mailgate; connection refused\r\n"), std::string::npos) << ds;
  EXPECT_NE(ds.find("Status: 4.2.2\r\n"), std::string::npos);
  EXPECT_NE(ds.find("rfc822; e@x\r\nAction: failed\r\nStatus: 5.0.0\r\n"), std::string::npos) << ds;
  EXPECT_NE(ds.find("rfc822; f@x\r\nAction: failed\r\nStatus: 5.0.0\r\nLast-Attempt-Date"), std::string::npos)
      << ds;
}

TEST(Dsn, LongRepliesAndHeadersStayWithinLineLimits) {
  QueueEntry e = original();
  DsnInput in = input(e);
  const std::string word(3000, 'w');
  in.failed = {{"<frank@example.com>",
                "550 5.1.1 " + word + " and\r\nan injected: line" + std::string(2000, ' ') + "x", false}};
  in.original_headers = "X-Long: " + word + "\r\nX-Nul: a" + std::string(1, '\0') + "b\rc\nSubject: s\r\n";
  const std::string msg = buildDsn(in);
  expectWellFormed(msg);
  const Parsed p = parse(msg);
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(msg.find("\r\nan injected: line"), std::string::npos);
  EXPECT_NE(p.parts[2].body.find("Subject: s\r\n"), std::string::npos);
  // Headers beyond kDsnMaxHead are cut.
  in.original_headers.clear();
  for (int i = 0; i < 5000; ++i) in.original_headers += "X-H: " + std::string(40, 'h') + "\r\n";
  const std::string big = buildDsn(in);
  expectWellFormed(big);
  EXPECT_LT(big.size(), kDsnMaxHead + 8192);
}

TEST(Dsn, BoundaryNeverInTheParts) {
  const QueueEntry e = original();
  DsnInput in = input(e);
  const std::string first = buildDsn(in);
  const Parsed p1 = parse(first);
  const std::string ct = p1.headers.at("content-type");
  const std::string boundary =
      ct.substr(ct.find("boundary=\"") + 10, ct.rfind('"') - ct.find("boundary=\"") - 10);
  // The same input with the boundary planted in the headers gets another one.
  in.original_headers = "X-Trap: --" + boundary + "\r\n";
  const std::string second = buildDsn(in);
  EXPECT_EQ(second.find("boundary=\"" + boundary + "\""), std::string::npos);
  ASSERT_TRUE(parse(second).ok);
  EXPECT_EQ(parse(second).parts.size(), 3u);
}

TEST(Dsn, Utf8Addresses) {
  QueueEntry e = original();
  e.smtputf8 = true;
  e.mail_from = "<j\xc3\xb6rg@b\xc3\xbc.example>";
  DsnInput in = input(e);
  in.failed = {{"<r\xc3\xa9+x=y@example.com>", "550 5.1.1 unknown", false}};
  in.original_headers =
      "Subject: gr\xc3\xbc\xc3\x9f"
      "e\r\n";
  const std::string msg = buildDsn(in);
  expectWellFormed(msg);
  const Parsed p = parse(msg);
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.headers.at("to"), "<j\xc3\xb6rg@b\xc3\xbc.example>");
  EXPECT_NE(p.parts[1].body.find("Final-Recipient: utf-8; r\\x{E9}\\x{2B}x\\x{3D}y@example.com\r\n"),
            std::string::npos)
      << p.parts[1].body;
  for (unsigned char c : p.parts[1].body) EXPECT_LT(c, 0x80);  // delivery-status stays 7-bit
  EXPECT_EQ(p.parts[0].headers.at("content-type"), "text/plain; charset=utf-8");
  EXPECT_EQ(p.parts[2].headers.at("content-type"), "message/global-headers");
}

TEST(Dsn, DueAndEntry) {
  QueueEntry e = original();
  EXPECT_TRUE(dsnDue(e));
  e.mail_from = "<>";
  EXPECT_FALSE(dsnDue(e));  // the null sender
  e.mail_from = "";
  EXPECT_FALSE(dsnDue(e));
  e.mail_from = "<alice@example.org>";
  e.dsn = true;
  EXPECT_FALSE(dsnDue(e));  // never a DSN for a DSN

  e = original();
  const QueueEntry d = dsnEntry(e, 2, kNow);
  EXPECT_EQ(d.id, "s9f8e7-3.dsn2");
  EXPECT_TRUE(validQueueId(d.id));
  EXPECT_EQ(d.mail_from, "<>");
  ASSERT_EQ(d.rcpts.size(), 1u);
  EXPECT_EQ(d.rcpts[0].addr, "<alice@example.org>");
  EXPECT_EQ(d.rcpts[0].state, RcptState::kPending);
  EXPECT_TRUE(d.dsn);
  EXPECT_EQ(d.next_ms, 0);
  EXPECT_EQ(d.created_ms, kNow);
  EXPECT_TRUE(d.listener.empty());
  EXPECT_FALSE(dsnDue(d));
  // It encodes (the store takes it).
  QueueEntry back;
  EXPECT_TRUE(decodeQueueMeta(encodeQueueMeta(d), &back));
  // A long original id still gives a valid one.
  e.id = std::string(64, 'q');
  EXPECT_TRUE(validQueueId(dsnEntry(e, 12, kNow).id));
  EXPECT_NE(dsnEntry(e, 1, kNow).id, dsnEntry(e, 2, kNow).id);
  e.mail_from = "<j\xc3\xb6rg@example.org>";
  EXPECT_TRUE(dsnEntry(e, 1, kNow).smtputf8);
}

}  // namespace
}  // namespace mailgate::queue
