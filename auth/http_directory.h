#pragma once
// Directory driver "http": a client of nginx's mail auth_http protocol, so that an
// existing auth_http service (seed 004's Perl handler, for one) keeps working as is.
//
// One blocking HTTP/1.0 exchange per login, on a worker thread:
//
//   GET /path HTTP/1.0                    Host: <host of the URL, as nginx sends it>
//   Auth-Method: plain                    Auth-User: <escaped>   Auth-Pass: <escaped>
//   Auth-Protocol: imap|pop3|smtp         Auth-Login-Attempt: N
//   Client-IP: 192.0.2.1                  Client-Host: [UNAVAILABLE]
//   Auth-SSL: on                          (only when the client connection has TLS)
//
// The answer's headers decide (names case-insensitive, CRLF or bare LF lines, at most
// kMaxResponseHeader bytes up to the blank line; the body is never read):
//   Auth-Status: OK + Auth-Server + Auth-Port → kOk, route "server:port" ("[v6]:port");
//       optional Auth-User / Auth-Pass replace the credentials given to the node.
//   Auth-Status: <any other text>            → kBadPassword, reason = that text
//       (+ Auth-Error-Code), Auth-Wait: N    → wait N seconds before the reply.
//   anything else (HTTP status other than 200, no Auth-Status, OK without server or
//   port, a malformed or oversize answer, connect failure, timeout) → kTempFail.
//
// Recipient checks (the MX at RCPT time) ask the way nginx's mail proxy does for an
// unauthenticated SMTP client (smtp_auth none):
//
//   Auth-Method: none   Auth-User: (empty)   Auth-Pass: (empty)   Auth-Protocol: smtp
//   Auth-Login-Attempt: 1   [Client-IP]   Client-Host: [UNAVAILABLE]
//   Auth-SMTP-Helo: <HELO argument, may be empty>
//   Auth-SMTP-From: MAIL FROM:<sender>   (empty when not known)
//   Auth-SMTP-To: RCPT TO:<local@domain> (local part re-quoted when not a dot-atom)
//
// and read the answer as:
//   Auth-Status: OK (Auth-Server/Auth-Port not needed)      → kLocal
//   Auth-Status WAIT, or Auth-Error-Code 4xx ("451 4.3.0")   → kTempFail
//   Auth-Error-Code 5xx containing 5.7.1 ("550 5.7.1")       → kForeignDomain
//   Auth-Error-Code other 5xx ("550 5.1.1", "550")           → kUnknownMailbox
//   other Auth-Status without a code: with Auth-Wait         → kTempFail
//                                     without                → kUnknownMailbox
//   a transport failure, timeout or malformed answer         → kTempFail
// The sender check (senderAllowed) is the default rule, the sender is the login:
// the protocol has no question for it.
//
// The URL (plain http only) is parsed and its host resolved once, in create(), as
// nginx does at configuration time; every request tries the resolved addresses in
// order within one deadline of `timeout` for the whole exchange.
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/directory.h"
#include "conf/config.h"
#include "gateway/core/log.h"
#include "gateway/core/result.h"

namespace mailgate::auth {

// Bounds on the responder's answer: status line and headers up to the blank line.
inline constexpr std::size_t kMaxResponseHeader = 16 * 1024;
// Auth-Wait larger than this is clamped (the operator's service, but a session
// must not be parked for hours).
inline constexpr std::chrono::seconds kMaxAuthWait{300};

struct AuthHttpUrl {
  std::string host;  // as written (an IPv6 literal without its brackets)
  uint16_t port = 80;
  std::string path = "/";   // path and query, as written
  std::string host_header;  // what nginx sends as Host: the host part only
};

// "http://host[:port][/path]" (the scheme may be omitted, as nginx allows). https and
// other schemes, user info, an empty host, a bad port or a control character or space
// in the path are errors.
Result<AuthHttpUrl> parseAuthHttpUrl(std::string_view url);

// nginx ngx_escape_uri(NGX_ESCAPE_MAIL_AUTH): %00-%1F, space and '%' become %XX
// (upper-case hex); every other byte, 8-bit ones included, is kept.
std::string escapeMailAuth(std::string_view text);

// The request bytes, headers in nginx's order and spelling.
std::string buildAuthHttpRequest(const AuthHttpUrl& url, std::string_view user, std::string_view password,
                                 const filters::SessionFacts& facts);

// The offset just past the blank line that ends the headers ("\r\n\r\n" or "\n\n",
// mixed too), or 0 when bytes does not hold one yet.
std::size_t authHttpHeaderEnd(std::string_view bytes);

// Interprets a complete header block (status line through the blank line). `user` is
// the client's login, copied to AuthResult.user on kOk.
AuthResult parseAuthHttpResponse(std::string_view header_block, std::string_view user);

// "<local@domain>" with the local part quoted when it is not a dot-atom.
std::string smtpPath(std::string_view address);

// The recipient-check request (see above), headers in nginx's order.
std::string buildAuthHttpRecipientRequest(const AuthHttpUrl& url, std::string_view address,
                                          const filters::SessionFacts& facts);

// Interprets the answer to a recipient check; *reason says why for a non-kLocal answer.
RecipientResult parseAuthHttpRecipientResponse(std::string_view header_block, std::string* reason);

class HttpDirectory : public Directory {
 public:
  static Result<std::shared_ptr<HttpDirectory>> create(const conf::HttpDirectoryConfig& config);

  // Thread-safe and blocking (at most `timeout` in the exchange).
  AuthResult authenticate(std::string_view user, std::string_view password) override;
  AuthResult authenticate(std::string_view user, std::string_view password,
                          const filters::SessionFacts& facts) override;
  // Thread-safe and blocking: the recipient check (see above).
  RecipientResult recipient(std::string_view address) override;
  RecipientResult recipient(std::string_view address, const filters::SessionFacts& facts) override;
  // senderAllowed: the default (the sender is the login).

  // "http_requests=N http_ok=N http_rejected=N http_tempfail=N http_rcpt_requests=N
  // http_rcpt_tempfail=N"
  std::string statsText() const override;

  const AuthHttpUrl& url() const { return url_; }

 private:
  struct Address {
    sockaddr_storage addr{};
    socklen_t len = 0;
  };

  HttpDirectory(AuthHttpUrl url, std::vector<Address> addresses, std::chrono::milliseconds timeout);
  // Sends request, reads the header block into *out; "" on success, else the reason.
  std::string exchange(const std::string& request, std::string* out) const;

  const AuthHttpUrl url_;
  const std::vector<Address> addresses_;
  const std::chrono::milliseconds timeout_;
  mutable std::atomic<uint64_t> requests_{0};
  mutable std::atomic<uint64_t> ok_{0};
  mutable std::atomic<uint64_t> rejected_{0};
  mutable std::atomic<uint64_t> tempfail_{0};
  std::atomic<uint64_t> rcpt_requests_{0};
  std::atomic<uint64_t> rcpt_tempfail_{0};
  log::RateLimit log_limit_{2};
};

}  // namespace mailgate::auth
