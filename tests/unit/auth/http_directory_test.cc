#include "auth/http_directory.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

namespace mailgate::auth {
namespace {

using namespace std::chrono_literals;

// ------------------------------------------------------------------ URL

TEST(AuthHttpUrl, HostPortPath) {
  auto u = parseAuthHttpUrl("http://127.0.0.1:8185/auth");
  ASSERT_TRUE(u.ok()) << u.error();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8185);
  EXPECT_EQ(u->path, "/auth");
  EXPECT_EQ(u->host_header, "127.0.0.1");
}

TEST(AuthHttpUrl, Defaults) {
  auto u = parseAuthHttpUrl("http://auth.example.org");
  ASSERT_TRUE(u.ok()) << u.error();
  EXPECT_EQ(u->host, "auth.example.org");
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->path, "/");
}

TEST(AuthHttpUrl, SchemeOptionalAsInNginx) {
  // Seed 004: auth_http storage-01.domain.ru:8185/auth;
  auto u = parseAuthHttpUrl("storage-01.domain.ru:8185/auth");
  ASSERT_TRUE(u.ok()) << u.error();
  EXPECT_EQ(u->host, "storage-01.domain.ru");
  EXPECT_EQ(u->port, 8185);
  EXPECT_EQ(u->path, "/auth");
  EXPECT_TRUE(parseAuthHttpUrl("HTTP://h/x").ok());
}

TEST(AuthHttpUrl, Ipv6AndQuery) {
  auto u = parseAuthHttpUrl("http://[::1]:9000/auth?site=a");
  ASSERT_TRUE(u.ok()) << u.error();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 9000);
  EXPECT_EQ(u->path, "/auth?site=a");
  EXPECT_EQ(u->host_header, "[::1]");
  auto q = parseAuthHttpUrl("http://h?x=1");
  ASSERT_TRUE(q.ok()) << q.error();
  EXPECT_EQ(q->path, "/?x=1");
}

TEST(AuthHttpUrl, Rejects) {
  for (const char* bad :
       {"https://h/auth", "ftp://h/", "http://", "http:///auth", "http://h:0/", "http://h:65536/",
        "http://h:x/", "http://h:/", "http://user:pw@h/", "http://[::1/", "http://[nothex]/",
        "http://[::1]x/", "http://h/a b", "http://h/a\r\n", "http://h\xff/"}) {
    EXPECT_FALSE(parseAuthHttpUrl(bad).ok()) << bad;
  }
}

// ------------------------------------------------------------------ escaping, request

TEST(AuthHttpEscape, LikeNginxMailAuth) {
  EXPECT_EQ(escapeMailAuth("alice@example.org"), "alice@example.org");
  EXPECT_EQ(escapeMailAuth("a b%c"), "a%20b%25c");
  EXPECT_EQ(escapeMailAuth(std::string_view("x\r\ny\0z\t\x1f", 8)), "x%0D%0Ay%00z%09%1F");
  // Everything else is kept as is: reserved URI characters, DEL, 8-bit bytes.
  EXPECT_EQ(escapeMailAuth("+/?&=#:;\"'<>\x7f\xd0\xbf"), "+/?&=#:;\"'<>\x7f\xd0\xbf");
  EXPECT_EQ(escapeMailAuth(""), "");
}

TEST(AuthHttpRequest, HeadersInNginxOrder) {
  auto u = parseAuthHttpUrl("http://127.0.0.1:8185/auth");
  ASSERT_TRUE(u.ok());
  filters::SessionFacts ctx;
  ctx.client_ip = "192.0.2.7";
  ctx.protocol = "imap";
  ctx.attempt = 2;
  ctx.secured = true;
  EXPECT_EQ(buildAuthHttpRequest(*u, "alice@example.org", "pa ss%", ctx),
            "GET /auth HTTP/1.0\r\n"
            "Host: 127.0.0.1\r\n"
            "Auth-Method: plain\r\n"
            "Auth-User: alice@example.org\r\n"
            "Auth-Pass: pa%20ss%25\r\n"
            "Auth-Protocol: imap\r\n"
            "Auth-Login-Attempt: 2\r\n"
            "Client-IP: 192.0.2.7\r\n"
            "Client-Host: [UNAVAILABLE]\r\n"
            "Auth-SSL: on\r\n"
            "\r\n");
}

TEST(AuthHttpRequest, PlainConnectionAndSubmission) {
  auto u = parseAuthHttpUrl("http://[::1]/");
  ASSERT_TRUE(u.ok());
  filters::SessionFacts ctx;
  ctx.client_ip = "2001:db8::1";
  ctx.protocol = "submission";
  std::string r = buildAuthHttpRequest(*u, "u\r\nX-Evil: 1", "p", ctx);
  EXPECT_NE(r.find("Host: [::1]\r\n"), std::string::npos);
  EXPECT_NE(r.find("Auth-Protocol: smtp\r\n"), std::string::npos);
  EXPECT_NE(r.find("Auth-Login-Attempt: 1\r\n"), std::string::npos);
  EXPECT_NE(r.find("Client-IP: 2001:db8::1\r\n"), std::string::npos);
  EXPECT_NE(r.find("Auth-User: u%0D%0AX-Evil:%201\r\n"), std::string::npos);
  EXPECT_EQ(r.find("Auth-SSL"), std::string::npos);
  EXPECT_EQ(r.find("\r\n\r\n"), r.size() - 4);  // one blank line, at the end
}

// ------------------------------------------------------------------ response

TEST(AuthHttpResponse, HeaderEnd) {
  EXPECT_EQ(authHttpHeaderEnd("HTTP/1.0 200 OK\r\nA: b\r\n\r\nbody"), 25U);
  EXPECT_EQ(authHttpHeaderEnd("HTTP/1.0 200 OK\nA: b\n\nbody"), 22U);
  EXPECT_EQ(authHttpHeaderEnd("HTTP/1.0 200 OK\r\nA: b\n\r\n"), 24U);
  EXPECT_EQ(authHttpHeaderEnd("HTTP/1.0 200 OK\r\nA: b\r\n"), 0U);
  EXPECT_EQ(authHttpHeaderEnd(""), 0U);
}

TEST(AuthHttpResponse, OkWithServerAndPort) {
  AuthResult r = parseAuthHttpResponse(
      "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.2\r\n"
      "Auth-Port: 143\r\n\r\n",
      "alice@example.org");
  ASSERT_EQ(r.verdict, Verdict::kOk) << r.reason;
  EXPECT_EQ(r.user, "alice@example.org");
  ASSERT_TRUE(r.route.has_value());
  EXPECT_EQ(r.route->primary, "10.0.0.2:143");
  EXPECT_EQ(r.route->secondary, "");
  EXPECT_FALSE(r.backend_user.has_value());
  EXPECT_FALSE(r.backend_password.has_value());
  EXPECT_EQ(r.wait.count(), 0);
}

TEST(AuthHttpResponse, OkCaseInsensitiveLfIpv6AndCredentials) {
  AuthResult r = parseAuthHttpResponse(
      "HTTP/1.1 200 OK\nauth-status:OK\nAUTH-SERVER:   2001:db8::5  \nauth-port: 110\n"
      "Auth-User: alice\nAuth-Pass: master secret\n\n",
      "alice@example.org");
  ASSERT_EQ(r.verdict, Verdict::kOk) << r.reason;
  ASSERT_TRUE(r.route.has_value());
  EXPECT_EQ(r.route->primary, "[2001:db8::5]:110");
  EXPECT_EQ(r.backend_user.value_or(""), "alice");
  EXPECT_EQ(r.backend_password.value_or(""), "master secret");
}

TEST(AuthHttpResponse, OkWithHostName) {
  // Seed 004 resolves the name itself; a name is accepted too (the router resolves it).
  AuthResult r = parseAuthHttpResponse(
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: storage-01.domain.ru\r\nAuth-Port: 143\r\n\r\n",
      "u");
  ASSERT_EQ(r.verdict, Verdict::kOk) << r.reason;
  EXPECT_EQ(r.route->primary, "storage-01.domain.ru:143");
}

TEST(AuthHttpResponse, FailureWithWait) {
  AuthResult r = parseAuthHttpResponse(
      "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n",
      "alice@example.org");
  EXPECT_EQ(r.verdict, Verdict::kBadPassword);
  EXPECT_EQ(r.reason, "auth_http: Invalid login or password");
  EXPECT_EQ(r.wait, std::chrono::milliseconds(3000));
  EXPECT_FALSE(r.route.has_value());
}

TEST(AuthHttpResponse, FailureWithErrorCodeAndOddWaits) {
  AuthResult r = parseAuthHttpResponse(
      "HTTP/1.0 200 OK\r\nAuth-Status: Temporary server problem, try again later\r\n"
      "Auth-Error-Code: 451 4.3.0\r\nAuth-Wait: soon\r\n\r\n",
      "u");
  EXPECT_EQ(r.verdict, Verdict::kBadPassword);
  EXPECT_EQ(r.reason, "auth_http: Temporary server problem, try again later (Auth-Error-Code: 451 4.3.0)");
  EXPECT_EQ(r.wait.count(), 0);  // not a number: ignored, as nginx does

  AuthResult big = parseAuthHttpResponse(
      "HTTP/1.0 200 OK\r\nAuth-Status: no\r\nAuth-Wait: 99999999999999999999999\r\n\r\n", "u");
  EXPECT_EQ(big.verdict, Verdict::kBadPassword);
  EXPECT_EQ(big.wait, std::chrono::milliseconds(kMaxAuthWait));
}

TEST(AuthHttpResponse, WaitIsTemporary) {
  AuthResult r = parseAuthHttpResponse("HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: 1\r\n\r\n", "u");
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
  EXPECT_EQ(r.wait, std::chrono::milliseconds(1000));
}

TEST(AuthHttpResponse, MalformedIsTemporaryFailure) {
  const char* cases[] = {
      "",                                                                     // nothing
      "\r\n",                                                                 // no status line
      "HTTP/1.0 500 Internal Server Error\r\nAuth-Status: OK\r\n\r\n",        // not 200
      "HTTP/1.0 404 Not Found\r\n\r\n",                                       // not 200
      "FOO/1.0 200 OK\r\nAuth-Status: OK\r\n\r\n",                            // not HTTP
      "HTTP/1.0 2x0 OK\r\nAuth-Status: OK\r\n\r\n",                           // bad code
      "HTTP/1.0 2000\r\nAuth-Status: OK\r\n\r\n",                             // bad code
      "HTTP/1.0 200 OK\r\n\r\n",                                              // no Auth-Status
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.1\r\n\r\n",  // no port
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Port: 143\r\n\r\n",         // no server
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: h\r\nAuth-Port: 0\r\n\r\n",
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: h\r\nAuth-Port: 70000\r\n\r\n",
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: a b\r\nAuth-Port: 143\r\n\r\n",
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: h/x\r\nAuth-Port: 143\r\n\r\n",
      "HTTP/1.0 200 OK\r\nAuth-Status OK\r\n\r\n",                                 // no colon
      "HTTP/1.0 200 OK\r\n: OK\r\n\r\n",                                           // empty name
      "HTTP/1.0 200 OK\r\nAuth-Status : OK\r\n\r\n",                               // space before colon
      "HTTP/1.0 200 OK\r\nX: a\r\n  folded\r\nAuth-Status: OK\r\n\r\n",            // obs-fold
      "HTTP/1.0 200 OK\r\nAuth-Status: O\rK\r\n\r\n",                              // stray CR
      "HTTP/1.0 200 OK\r\nAuth-Status: bad\x01\r\n\r\n",                           // control char
      "HTTP/1.0 200 OK\r\nAuth-Status: no\r\nAuth-Status: OK\r\n\r\n",             // duplicate
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: h\r\nAuth-Port: 1\r\n",  // unterminated
  };
  for (const char* c : cases) {
    AuthResult r = parseAuthHttpResponse(c, "u");
    EXPECT_EQ(r.verdict, Verdict::kTempFail) << c;
    EXPECT_FALSE(r.reason.empty()) << c;
  }
  AuthResult nul =
      parseAuthHttpResponse(std::string_view("HTTP/1.0 200 OK\r\nAuth-Status: O\0K\r\n\r\n", 37), "u");
  EXPECT_EQ(nul.verdict, Verdict::kTempFail);
}

TEST(AuthHttpResponse, Oversize) {
  std::string big = "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: h\r\nAuth-Port: 1\r\nX-Pad: ";
  big += std::string(kMaxResponseHeader, 'a');
  big += "\r\n\r\n";
  AuthResult r = parseAuthHttpResponse(big, "u");
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
}

TEST(AuthHttpResponse, ReasonIsBoundedAndPrintable) {
  std::string resp = "HTTP/1.0 200 OK\r\nAuth-Status: ";
  resp += std::string(1000, 'x') + "\xd0\xbf";
  resp += "\r\n\r\n";
  AuthResult r = parseAuthHttpResponse(resp, "u");
  EXPECT_EQ(r.verdict, Verdict::kBadPassword);
  EXPECT_LT(r.reason.size(), 300U);
  for (char c : r.reason) EXPECT_TRUE(c >= 0x20 && c < 0x7f);
}

// ------------------------------------------------------------------ live, against a listener thread

// Accepts one connection on 127.0.0.1, reads the request up to its blank line, then
// sends `reply` (unless hang, where it holds the connection until stopped) and closes.
class OneShotServer {
 public:
  explicit OneShotServer(std::string reply, bool hang = false) : reply_(std::move(reply)), hang_(hang) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~OneShotServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/auth"; }
  // Valid after the directory call returned.
  std::string request() {
    for (int i = 0; i < 200 && !done_; ++i) std::this_thread::sleep_for(10ms);
    return request_;
  }

 private:
  bool waitReadable(int fd) {
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) > 0) return true;
    }
    return false;
  }
  void run() {
    if (!waitReadable(fd_)) return;
    int c = ::accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    std::string req;
    char buf[1024];
    while (req.find("\r\n\r\n") == std::string::npos && waitReadable(c)) {
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      req.append(buf, static_cast<std::size_t>(n));
    }
    request_ = req;
    done_ = true;
    if (hang_) {
      while (!stop_) std::this_thread::sleep_for(10ms);
    } else {
      std::size_t off = 0;
      while (off < reply_.size()) {
        ssize_t n = ::send(c, reply_.data() + off, reply_.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
      }
    }
    ::close(c);
  }

  std::string reply_;
  bool hang_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  std::string request_;
};

conf::HttpDirectoryConfig configFor(const std::string& url, std::chrono::milliseconds timeout = 2000ms) {
  conf::HttpDirectoryConfig c;
  c.url = url;
  c.timeout = timeout;
  return c;
}

TEST(HttpDirectoryLive, LoginOk) {
  OneShotServer server(
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: "
      "10143\r\n\r\n<html>ignored</html>");
  auto dir = HttpDirectory::create(configFor(server.url()));
  ASSERT_TRUE(dir.ok()) << dir.error();
  filters::SessionFacts ctx;
  ctx.client_ip = "203.0.113.9";
  ctx.protocol = "pop3";
  ctx.attempt = 1;
  ctx.secured = true;
  AuthResult r = (*dir)->authenticate("alice@example.org", "s3cret pw", ctx);
  ASSERT_EQ(r.verdict, Verdict::kOk) << r.reason;
  EXPECT_EQ(r.route->primary, "127.0.0.1:10143");
  std::string req = server.request();
  EXPECT_EQ(req.rfind("GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\n", 0), 0U) << req;
  EXPECT_NE(req.find("\r\nAuth-Pass: s3cret%20pw\r\n"), std::string::npos) << req;
  EXPECT_NE(req.find("\r\nAuth-Protocol: pop3\r\n"), std::string::npos) << req;
  EXPECT_NE(req.find("\r\nClient-IP: 203.0.113.9\r\n"), std::string::npos) << req;
  EXPECT_NE(req.find("\r\nAuth-SSL: on\r\n"), std::string::npos) << req;
  EXPECT_EQ(
      (*dir)->statsText(),
      "http_requests=1 http_ok=1 http_rejected=0 http_tempfail=0 http_rcpt_requests=0 http_rcpt_tempfail=0");
}

TEST(HttpDirectoryLive, BadPasswordWithWaitLfOnly) {
  OneShotServer server("HTTP/1.0 200 OK\nAuth-Status: Invalid login or password\nAuth-Wait: 2\n\n");
  auto dir = HttpDirectory::create(configFor(server.url()));
  ASSERT_TRUE(dir.ok()) << dir.error();
  AuthResult r = (*dir)->authenticate("alice@example.org", "wrong");
  EXPECT_EQ(r.verdict, Verdict::kBadPassword);
  EXPECT_EQ(r.wait, std::chrono::milliseconds(2000));
  EXPECT_EQ(r.reason, "auth_http: Invalid login or password");
}

TEST(HttpDirectoryLive, ServerErrorIsTemporary) {
  OneShotServer server("HTTP/1.0 502 Bad Gateway\r\n\r\n");
  auto dir = HttpDirectory::create(configFor(server.url()));
  ASSERT_TRUE(dir.ok()) << dir.error();
  AuthResult r = (*dir)->authenticate("u", "p");
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
  EXPECT_NE(r.reason.find("502"), std::string::npos) << r.reason;
}

TEST(HttpDirectoryLive, OversizeResponseIsTemporary) {
  std::string reply = "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n";
  while (reply.size() < kMaxResponseHeader + 4096)
    reply += "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
  reply += "\r\n";
  OneShotServer server(reply);
  auto dir = HttpDirectory::create(configFor(server.url()));
  ASSERT_TRUE(dir.ok()) << dir.error();
  AuthResult r = (*dir)->authenticate("u", "p");
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
  EXPECT_NE(r.reason.find("over"), std::string::npos) << r.reason;
}

TEST(HttpDirectoryLive, ClosedWithoutAnswerIsTemporary) {
  OneShotServer server("");
  auto dir = HttpDirectory::create(configFor(server.url()));
  ASSERT_TRUE(dir.ok()) << dir.error();
  AuthResult r = (*dir)->authenticate("u", "p");
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
  EXPECT_NE(r.reason.find("closed"), std::string::npos) << r.reason;
}

TEST(HttpDirectoryLive, TimeoutBoundsTheExchange) {
  OneShotServer server("", /*hang=*/true);
  auto dir = HttpDirectory::create(configFor(server.url(), 300ms));
  ASSERT_TRUE(dir.ok()) << dir.error();
  auto t0 = std::chrono::steady_clock::now();
  AuthResult r = (*dir)->authenticate("u", "p");
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
  EXPECT_NE(r.reason.find("timed out"), std::string::npos) << r.reason;
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 2s);
}

TEST(HttpDirectoryLive, ConnectRefusedIsTemporary) {
  uint16_t port;
  {
    OneShotServer probe("");  // a port that was free a moment ago
    port = probe.port();
  }
  auto dir = HttpDirectory::create(configFor("http://127.0.0.1:" + std::to_string(port) + "/auth"));
  ASSERT_TRUE(dir.ok()) << dir.error();
  AuthResult r = (*dir)->authenticate("u", "p");
  EXPECT_EQ(r.verdict, Verdict::kTempFail);
  EXPECT_NE(r.reason.find("connect"), std::string::npos) << r.reason;
  EXPECT_EQ(
      (*dir)->statsText(),
      "http_requests=1 http_ok=0 http_rejected=0 http_tempfail=1 http_rcpt_requests=0 http_rcpt_tempfail=0");
}

TEST(HttpDirectoryCreate, Rejects) {
  EXPECT_FALSE(HttpDirectory::create(configFor("https://127.0.0.1/auth")).ok());
  EXPECT_FALSE(HttpDirectory::create(configFor("http://127.0.0.1/auth", 0ms)).ok());
  EXPECT_FALSE(HttpDirectory::create(configFor("http://no-such-host.invalid/auth")).ok());
}

// ------------------------------------------------------------------ recipient check

TEST(AuthHttpRecipient, RequestAsNginxSmtpAuthNone) {
  auto u = parseAuthHttpUrl("http://auth.example.org:8185/auth");
  ASSERT_TRUE(u.ok());
  filters::SessionFacts env;
  env.helo = "client.example.com";
  env.from = "";
  env.client_ip = "192.0.2.42";
  EXPECT_EQ(buildAuthHttpRecipientRequest(*u, "postmaster@mail.example.com", env),
            "GET /auth HTTP/1.0\r\n"
            "Host: auth.example.org\r\n"
            "Auth-Method: none\r\n"
            "Auth-User: \r\n"
            "Auth-Pass: \r\n"
            "Auth-Protocol: smtp\r\n"
            "Auth-Login-Attempt: 1\r\n"
            "Client-IP: 192.0.2.42\r\n"
            "Client-Host: [UNAVAILABLE]\r\n"
            "Auth-SMTP-Helo: client.example.com\r\n"
            "Auth-SMTP-From: MAIL FROM:<>\r\n"
            "Auth-SMTP-To: RCPT TO:<postmaster@mail.example.com>\r\n"
            "\r\n");
}

TEST(AuthHttpRecipient, UnknownEnvelopeIsEmptyAndSenderIsAPath) {
  auto u = parseAuthHttpUrl("http://127.0.0.1/auth");
  ASSERT_TRUE(u.ok());
  std::string req = buildAuthHttpRecipientRequest(*u, "bob@example.org", filters::SessionFacts{});
  EXPECT_NE(
      req.find("\r\nAuth-SMTP-Helo: \r\nAuth-SMTP-From: \r\nAuth-SMTP-To: RCPT TO:<bob@example.org>\r\n"),
      std::string::npos)
      << req;
  EXPECT_EQ(req.find("Client-IP"), std::string::npos) << req;
  filters::SessionFacts env;
  env.from = "alice@example.org";
  env.secured = true;
  req = buildAuthHttpRecipientRequest(*u, "bob@example.org", env);
  EXPECT_NE(req.find("\r\nAuth-SMTP-From: MAIL FROM:<alice@example.org>\r\n"), std::string::npos) << req;
  EXPECT_NE(req.find("\r\nAuth-SSL: on\r\n\r\n"), std::string::npos) << req;
}

TEST(AuthHttpRecipient, LocalPartRequotedAndNoControlBytes) {
  EXPECT_EQ(smtpPath("a.b+c@example.org"), "<a.b+c@example.org>");
  EXPECT_EQ(smtpPath("john doe@example.org"), "<\"john doe\"@example.org>");
  EXPECT_EQ(smtpPath("a\"b\\c@example.org"), "<\"a\\\"b\\\\c\"@example.org>");
  EXPECT_EQ(smtpPath("a..b@example.org"), "<\"a..b\"@example.org>");
  auto u = parseAuthHttpUrl("http://127.0.0.1/auth");
  ASSERT_TRUE(u.ok());
  std::string req =
      buildAuthHttpRecipientRequest(*u, std::string("x\r\ny\0z@example.org", 18), filters::SessionFacts{});
  EXPECT_NE(req.find("RCPT TO:<\"x%0D%0Ay%00z\"@example.org>\r\n"), std::string::npos) << req;
  EXPECT_EQ(req.find("\r\n\r\n"), req.size() - 4);
}

RecipientResult rcptAnswer(const std::string& headers, std::string* reason = nullptr) {
  std::string why;
  RecipientResult r = parseAuthHttpRecipientResponse("HTTP/1.0 200 OK\r\n" + headers + "\r\n", &why);
  if (reason) *reason = why;
  return r;
}

TEST(AuthHttpRecipient, AnswerMapping) {
  EXPECT_EQ(rcptAnswer("Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 25\r\n"),
            RecipientResult::kLocal);
  EXPECT_EQ(rcptAnswer("Auth-Status: OK\r\n"), RecipientResult::kLocal);
  std::string why;
  EXPECT_EQ(rcptAnswer("Auth-Status: User unknown\r\nAuth-Error-Code: 550 5.1.1\r\n", &why),
            RecipientResult::kUnknownMailbox);
  EXPECT_EQ(why, "auth_http: User unknown (Auth-Error-Code: 550 5.1.1)");
  EXPECT_EQ(rcptAnswer("Auth-Status: no\r\nAuth-Error-Code: 550\r\n"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(rcptAnswer("Auth-Status: no\r\nAuth-Error-Code: 550 5.1.10\r\n"),
            RecipientResult::kUnknownMailbox);
  EXPECT_EQ(rcptAnswer("Auth-Status: no\r\nAuth-Error-Code: 5.1.1\r\n"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(rcptAnswer("Auth-Status: Relay access denied\r\nAuth-Error-Code: 550 5.7.1\r\n"),
            RecipientResult::kForeignDomain);
  EXPECT_EQ(rcptAnswer("Auth-Status: x\r\nAuth-Error-Code: 554 5.7.1 relaying denied\r\n"),
            RecipientResult::kForeignDomain);
  EXPECT_EQ(rcptAnswer("Auth-Status: Try later\r\nAuth-Error-Code: 451 4.3.0\r\n"),
            RecipientResult::kTempFail);
  EXPECT_EQ(rcptAnswer("Auth-Status: x\r\nAuth-Error-Code: 450\r\n"), RecipientResult::kTempFail);
  EXPECT_EQ(rcptAnswer("Auth-Status: WAIT\r\n"), RecipientResult::kTempFail);
  EXPECT_EQ(rcptAnswer("Auth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n"),
            RecipientResult::kTempFail);
  EXPECT_EQ(rcptAnswer("Auth-Status: Invalid login or password\r\n"), RecipientResult::kUnknownMailbox);
}

TEST(AuthHttpRecipient, MalformedOrNotOkHttpIsTemporary) {
  std::string why;
  EXPECT_EQ(parseAuthHttpRecipientResponse("HTTP/1.0 500 Oops\r\nAuth-Status: OK\r\n\r\n", &why),
            RecipientResult::kTempFail);
  EXPECT_EQ(why, "auth_http: HTTP status 500");
  EXPECT_EQ(rcptAnswer("Content-Type: text/html\r\n"), RecipientResult::kTempFail);
  EXPECT_EQ(rcptAnswer("Auth-Status: OK\r\nAuth-Status: OK\r\n"), RecipientResult::kTempFail);
  EXPECT_EQ(parseAuthHttpRecipientResponse("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n", &why),
            RecipientResult::kTempFail);
}

TEST(HttpDirectoryLive, RecipientAnswers) {
  {
    OneShotServer server(
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 25\r\n\r\n");
    auto dir = HttpDirectory::create(configFor(server.url()));
    ASSERT_TRUE(dir.ok()) << dir.error();
    EXPECT_EQ((*dir)->recipient("alice@example.org"), RecipientResult::kLocal);
    const std::string req = server.request();
    EXPECT_NE(req.find("\r\nAuth-Method: none\r\nAuth-User: \r\nAuth-Pass: \r\nAuth-Protocol: smtp\r\n"),
              std::string::npos)
        << req;
    EXPECT_NE(req.find("\r\nAuth-SMTP-To: RCPT TO:<alice@example.org>\r\n"), std::string::npos) << req;
  }
  {
    OneShotServer server("HTTP/1.0 200 OK\nAuth-Status: unknown\nAuth-Error-Code: 550 5.1.1\n\n");
    auto dir = HttpDirectory::create(configFor(server.url()));
    ASSERT_TRUE(dir.ok()) << dir.error();
    EXPECT_EQ((*dir)->recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  }
  {
    OneShotServer server("", /*hang=*/true);
    auto dir = HttpDirectory::create(configFor(server.url(), 200ms));
    ASSERT_TRUE(dir.ok()) << dir.error();
    EXPECT_EQ((*dir)->recipient("alice@example.org"), RecipientResult::kTempFail);
    EXPECT_EQ((*dir)->statsText(),
              "http_requests=0 http_ok=0 http_rejected=0 http_tempfail=0 http_rcpt_requests=1 "
              "http_rcpt_tempfail=1");
  }
}

TEST(HttpDirectory, SenderIsTheLogin) {
  auto dir = HttpDirectory::create(configFor("http://127.0.0.1:1/auth"));
  ASSERT_TRUE(dir.ok()) << dir.error();
  EXPECT_EQ((*dir)->senderAllowed("alice@example.org", "Alice@Example.org"), SenderResult::kAllowed);
  EXPECT_EQ((*dir)->senderAllowed("alice@example.org", "bob@example.org"), SenderResult::kDenied);
}

}  // namespace
}  // namespace mailgate::auth
