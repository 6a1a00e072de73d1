#include "auth/http_directory.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "gateway/core/ascii.h"
#include "gateway/core/log.h"

namespace mailgate::auth {
namespace {

using Clock = std::chrono::steady_clock;

// Longest responder text kept in AuthResult.reason (it goes to the log).
constexpr std::size_t kMaxReasonText = 200;

// RFC 9110 tchar.
bool isTokenChar(unsigned char c) {
  if (ascii::isDigit(static_cast<char>(c)) || ascii::isAlpha(static_cast<char>(c))) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

bool isHostNameChar(char c) {
  return ascii::isDigit(c) || ascii::isAlpha(c) || c == '-' || c == '.' || c == '_';
}

bool validHostName(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  return std::all_of(host.begin(), host.end(), isHostNameChar);
}

bool isIpv6Literal(std::string_view s) {
  if (s.empty() || s.size() >= INET6_ADDRSTRLEN) return false;
  std::string tmp(s);
  in6_addr a{};
  return inet_pton(AF_INET6, tmp.c_str(), &a) == 1;
}

bool isIpv4Literal(std::string_view s) {
  if (s.empty() || s.size() >= INET_ADDRSTRLEN) return false;
  std::string tmp(s);
  in_addr a{};
  return inet_pton(AF_INET, tmp.c_str(), &a) == 1;
}

// 1..65535 from 1-5 decimal digits; nullopt otherwise.
std::optional<uint16_t> parsePort(std::string_view s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    if (!ascii::isDigit(c)) return std::nullopt;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v == 0 || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

// Printable ASCII copy for the log, bounded.
std::string forLog(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, kMaxReasonText))
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  if (s.size() > kMaxReasonText) out += "...";
  return out;
}

std::size_t headerEndFrom(std::string_view bytes, std::size_t from) {
  for (std::size_t i = from; i < bytes.size(); ++i) {
    if (bytes[i] != '\n') continue;
    std::size_t j = i + 1;
    if (j < bytes.size() && bytes[j] == '\r') ++j;
    if (j < bytes.size() && bytes[j] == '\n') return j + 1;
  }
  return 0;
}

AuthResult tempFail(std::string reason) {
  AuthResult r;
  r.verdict = Verdict::kTempFail;
  r.reason = std::move(reason);
  return r;
}

std::string errnoText(int err) {
  char buf[128];
  // GNU strerror_r returns the message pointer (which may or may not be buf).
  return std::string(strerror_r(err, buf, sizeof buf));
}

int remainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 1000000 ? 1000000 : static_cast<int>(left);
}

// Waits for events on fd until the deadline. "" when ready, else the reason.
std::string waitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    int ms = remainingMs(deadline);
    if (ms == 0) return "timed out";
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, ms);
    if (n > 0) return {};
    if (n == 0) return "timed out";
    if (errno != EINTR) return "poll: " + errnoText(errno);
  }
}

class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

// ------------------------------------------------------------------ URL, escaping, request

Result<AuthHttpUrl> parseAuthHttpUrl(std::string_view url) {
  std::string_view rest = url;
  if (ascii::istartsWith(rest, "http://")) {
    rest.remove_prefix(7);
  } else if (rest.find("://") != std::string_view::npos) {
    return Error{"only plain http://host[:port]/path is supported (no https, as in nginx)"};
  }
  std::size_t end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, end);
  std::string_view path = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  if (authority.find('@') != std::string_view::npos) return Error{"user info is not supported"};

  AuthHttpUrl out;
  std::string_view port_text;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return Error{"unterminated [IPv6] host"};
    out.host = std::string(authority.substr(1, close - 1));
    if (!isIpv6Literal(out.host)) return Error{"bad IPv6 address [" + forLog(out.host) + "]"};
    out.host_header = "[" + out.host + "]";
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return Error{"junk after [IPv6] host"};
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    std::size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      has_port = true;
    }
    if (!validHostName(out.host)) return Error{"bad or empty host \"" + forLog(out.host) + "\""};
    out.host_header = out.host;
  }
  if (has_port) {
    auto port = parsePort(port_text);
    if (!port) return Error{"bad port \"" + forLog(port_text) + "\""};
    out.port = *port;
  }
  for (unsigned char c : path)
    if (c <= 0x20 || c >= 0x7f) return Error{"space, control or 8-bit character in the path"};
  if (path.empty()) {
    out.path = "/";
  } else if (path.front() == '?') {
    out.path = "/" + std::string(path);
  } else {
    out.path = std::string(path);
  }
  return out;
}

std::string escapeMailAuth(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (c < 0x20 || c == ' ' || c == '%') {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

namespace {

// The request line and the headers every auth_http request carries, in nginx's order.
std::string requestHead(const AuthHttpUrl& url, std::string_view method, std::string_view user,
                        std::string_view password, std::string_view protocol, unsigned attempt,
                        std::string_view client_ip) {
  std::string r;
  r.reserve(320 + user.size() * 3 + password.size() * 3);
  r += "GET ";
  r += url.path;
  r += " HTTP/1.0\r\n";
  r += "Host: " + url.host_header + "\r\n";
  r += "Auth-Method: " + escapeMailAuth(method) + "\r\n";
  r += "Auth-User: " + escapeMailAuth(user) + "\r\n";
  r += "Auth-Pass: " + escapeMailAuth(password) + "\r\n";
  if (!protocol.empty()) r += "Auth-Protocol: " + escapeMailAuth(protocol) + "\r\n";
  r += "Auth-Login-Attempt: " + std::to_string(attempt) + "\r\n";
  if (!client_ip.empty()) r += "Client-IP: " + escapeMailAuth(client_ip) + "\r\n";
  // mailgate does no reverse DNS: nginx without a resolver sends this marker.
  r += "Client-Host: [UNAVAILABLE]\r\n";
  return r;
}

}  // namespace

std::string buildAuthHttpRequest(const AuthHttpUrl& url, std::string_view user, std::string_view password,
                                 const filters::SessionFacts& facts) {
  std::string protocol = ascii::lower(facts.protocol);
  if (protocol == "submission" || protocol == "lmtp") protocol = "smtp";
  std::string r = requestHead(url, facts.method.empty() ? std::string_view("plain") : facts.method, user,
                              password, protocol, facts.attempt == 0 ? 1U : facts.attempt, facts.client_ip);
  if (facts.secured) r += "Auth-SSL: on\r\n";
  r += "\r\n";
  return r;
}

std::size_t authHttpHeaderEnd(std::string_view bytes) { return headerEndFrom(bytes, 0); }

// ------------------------------------------------------------------ response

namespace {

// The headers of an auth_http answer that mailgate reads (views into the block).
struct AuthHttpHeaders {
  std::optional<std::string_view> auth_status, server, port, wait, error_code, new_user, new_pass;
};

// Checks the status line (200 only) and collects the known headers. "" when the block
// is well-formed, else the reason (a temporary failure for the caller).
std::string parseAuthHttpHeaders(std::string_view block, AuthHttpHeaders* h) {
  if (block.size() > kMaxResponseHeader) return "auth_http: response headers over the size limit";

  // Split into lines: LF ends a line, one CR before it is dropped; any other CR, or a
  // NUL, is malformed.
  std::vector<std::string_view> lines;
  std::size_t pos = 0;
  bool ended = false;
  while (pos < block.size()) {
    std::size_t nl = block.find('\n', pos);
    if (nl == std::string_view::npos) return "auth_http: malformed response (unterminated line)";
    std::string_view line = block.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos)
      return "auth_http: malformed response (stray CR or NUL)";
    pos = nl + 1;
    if (line.empty()) {  // end of headers
      ended = true;
      break;
    }
    lines.push_back(line);
  }
  if (!ended) return "auth_http: malformed response (no blank line after the headers)";
  if (lines.empty()) return "auth_http: malformed response (no status line)";

  // Status line: HTTP/x.y SP 3DIGIT [SP reason]
  std::string_view status = lines.front();
  if (!ascii::istartsWith(status, "HTTP/")) return "auth_http: malformed response (bad status line)";
  std::size_t sp = status.find(' ');
  if (sp == std::string_view::npos || status.size() < sp + 4 || !ascii::isDigit(status[sp + 1]) ||
      !ascii::isDigit(status[sp + 2]) || !ascii::isDigit(status[sp + 3]) ||
      (status.size() > sp + 4 && status[sp + 4] != ' '))
    return "auth_http: malformed response (bad status line)";
  std::string_view code = status.substr(sp + 1, 3);
  if (code != "200") return "auth_http: HTTP status " + std::string(code);

  struct Known {
    std::string_view name;
    std::optional<std::string_view>* slot;
  };
  const Known known[] = {
      {"Auth-Status", &h->auth_status}, {"Auth-Server", &h->server},         {"Auth-Port", &h->port},
      {"Auth-Wait", &h->wait},          {"Auth-Error-Code", &h->error_code}, {"Auth-User", &h->new_user},
      {"Auth-Pass", &h->new_pass}};

  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return "auth_http: malformed response (header line without name)";
    std::string_view name = line.substr(0, colon);
    for (char c : name)  // also rejects obs-fold (leading space) and space before ':'
      if (!isTokenChar(static_cast<unsigned char>(c)))
        return "auth_http: malformed response (bad header name)";
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    for (char ch : value) {
      auto c = static_cast<unsigned char>(ch);
      if ((c < 0x20 && c != '\t') || c == 0x7f)
        return "auth_http: malformed response (control character in a header)";
    }
    for (const Known& k : known) {
      if (!ascii::iequals(name, k.name)) continue;
      if (k.slot->has_value()) return "auth_http: malformed response (duplicate " + std::string(k.name) + ")";
      *k.slot = value;
    }
  }
  return {};
}

}  // namespace

AuthResult parseAuthHttpResponse(std::string_view block, std::string_view user) {
  AuthHttpHeaders h;
  if (std::string why = parseAuthHttpHeaders(block, &h); !why.empty()) return tempFail(std::move(why));
  auto& [auth_status, server, port, wait, error_code, new_user, new_pass] = h;

  if (!auth_status) return tempFail("auth_http: response without Auth-Status");

  if (*auth_status == "OK") {
    if (!server || server->empty() || !port)
      return tempFail("auth_http: Auth-Status OK without Auth-Server and Auth-Port");
    auto port_num = parsePort(*port);
    if (!port_num) return tempFail("auth_http: bad Auth-Port \"" + forLog(*port) + "\"");
    std::string host(*server);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    std::string primary;
    if (isIpv6Literal(host)) {
      primary = "[" + host + "]:" + std::to_string(*port_num);
    } else if (isIpv4Literal(host) || validHostName(host)) {
      primary = host + ":" + std::to_string(*port_num);
    } else {
      return tempFail("auth_http: bad Auth-Server \"" + forLog(*server) + "\"");
    }
    AuthResult r;
    r.verdict = Verdict::kOk;
    r.user = std::string(user);
    r.route = RouteHint{primary, {}};
    if (new_user && !new_user->empty()) r.backend_user = std::string(*new_user);
    if (new_pass && !new_pass->empty()) r.backend_password = std::string(*new_pass);
    return r;
  }

  // Auth-Wait: N seconds (nginx ignores a value that is not a number).
  std::chrono::milliseconds wait_ms{0};
  if (wait && !wait->empty() && std::all_of(wait->begin(), wait->end(), ascii::isDigit)) {
    uint64_t seconds = 0;
    for (char c : *wait) {
      seconds = seconds * 10 + static_cast<uint64_t>(c - '0');
      if (seconds > static_cast<uint64_t>(kMaxAuthWait.count())) {
        seconds = static_cast<uint64_t>(kMaxAuthWait.count());
        break;
      }
    }
    wait_ms = std::chrono::seconds(seconds);
  }

  AuthResult r;
  r.wait = wait_ms;
  if (*auth_status == "WAIT") {
    // nginx asks the server again after Auth-Wait; mailgate answers a temporary failure.
    r.verdict = Verdict::kTempFail;
    r.reason = "auth_http: Auth-Status WAIT";
    return r;
  }
  r.verdict = Verdict::kBadPassword;
  r.reason = "auth_http: " + forLog(*auth_status);
  if (error_code && !error_code->empty()) r.reason += " (Auth-Error-Code: " + forLog(*error_code) + ")";
  return r;
}

// ------------------------------------------------------------------ recipient check

namespace {

bool isAtext(unsigned char c) {
  if (c >= 0x80) return true;  // SMTPUTF8
  if (ascii::isDigit(static_cast<char>(c)) || ascii::isAlpha(static_cast<char>(c))) return true;
  return c != 0 && std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr;
}

bool isDotAtom(std::string_view s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '.') {
      if (s[i + 1] == '.') return false;
      continue;
    }
    if (!isAtext(c)) return false;
  }
  return true;
}

// A header value that cannot break the request: control bytes become %XX.
std::string noControls(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace

std::string smtpPath(std::string_view address) {
  const std::size_t at = address.rfind('@');
  std::string_view local = at == std::string_view::npos ? address : address.substr(0, at);
  std::string out = "<";
  if (isDotAtom(local)) {
    out += local;
  } else {
    out += '"';
    for (char c : local) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  if (at != std::string_view::npos) out += address.substr(at);
  out += '>';
  return out;
}

std::string buildAuthHttpRecipientRequest(const AuthHttpUrl& url, std::string_view address,
                                          const filters::SessionFacts& facts) {
  std::string r = requestHead(url, "none", "", "", "smtp", 1, facts.client_ip);
  // nginx passes the client's command lines as they were (they hold no CRLF).
  r += "Auth-SMTP-Helo: " + noControls(facts.helo) + "\r\n";
  r += "Auth-SMTP-From: ";
  if (facts.from)
    r += "MAIL FROM:" + (facts.from->empty() ? std::string("<>") : noControls(smtpPath(*facts.from)));
  r += "\r\n";
  r += "Auth-SMTP-To: RCPT TO:" + noControls(smtpPath(address)) + "\r\n";
  if (facts.secured) r += "Auth-SSL: on\r\n";
  r += "\r\n";
  return r;
}

RecipientResult parseAuthHttpRecipientResponse(std::string_view block, std::string* reason) {
  AuthHttpHeaders h;
  if (std::string why = parseAuthHttpHeaders(block, &h); !why.empty()) {
    *reason = std::move(why);
    return RecipientResult::kTempFail;
  }
  if (!h.auth_status) {
    *reason = "auth_http: response without Auth-Status";
    return RecipientResult::kTempFail;
  }
  if (*h.auth_status == "OK") {
    reason->clear();
    return RecipientResult::kLocal;
  }
  *reason = "auth_http: " + forLog(*h.auth_status);
  if (h.error_code && !h.error_code->empty()) *reason += " (Auth-Error-Code: " + forLog(*h.error_code) + ")";
  if (*h.auth_status == "WAIT") return RecipientResult::kTempFail;
  // The SMTP reply code decides: "451 4.3.0 ...", "550 5.1.1 ...", "550 5.7.1 ..."
  // (or the enhanced code alone).
  std::string_view code = h.error_code ? *h.error_code : std::string_view{};
  if (!code.empty() && code.front() == '4') return RecipientResult::kTempFail;
  if (!code.empty() && code.front() == '5') {
    return code.find("5.7.1") != std::string_view::npos ? RecipientResult::kForeignDomain
                                                        : RecipientResult::kUnknownMailbox;
  }
  // No usable code: Auth-Wait asks for a pause (nginx: delay, then the error), which
  // mailgate answers as a temporary failure; a plain refusal is an unknown mailbox.
  if (h.wait && !h.wait->empty()) return RecipientResult::kTempFail;
  return RecipientResult::kUnknownMailbox;
}

// ------------------------------------------------------------------ the driver

Result<std::shared_ptr<HttpDirectory>> HttpDirectory::create(const conf::HttpDirectoryConfig& config) {
  auto url = parseAuthHttpUrl(config.url);
  if (!url) return Error{"url \"" + forLog(config.url) + "\": " + url.error()};
  if (config.timeout.count() <= 0) return Error{"timeout: must be positive"};

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(url->port);
  int rc = ::getaddrinfo(url->host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Error{"url: cannot resolve " + url->host + ": " + gai_strerror(rc)};
  std::vector<Address> addresses;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    Address a;
    std::memcpy(&a.addr, ai->ai_addr, ai->ai_addrlen);
    a.len = ai->ai_addrlen;
    addresses.push_back(a);
  }
  ::freeaddrinfo(res);
  if (addresses.empty()) return Error{"url: " + url->host + " has no address"};
  return std::shared_ptr<HttpDirectory>(
      new HttpDirectory(std::move(url.value()), std::move(addresses), config.timeout));
}

HttpDirectory::HttpDirectory(AuthHttpUrl url, std::vector<Address> addresses,
                             std::chrono::milliseconds timeout)
    : url_(std::move(url)), addresses_(std::move(addresses)), timeout_(timeout) {}

AuthResult HttpDirectory::authenticate(std::string_view user, std::string_view password) {
  return authenticate(user, password, filters::SessionFacts{});
}

AuthResult HttpDirectory::authenticate(std::string_view user, std::string_view password,
                                       const filters::SessionFacts& facts) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  const std::string request = buildAuthHttpRequest(url_, user, password, facts);
  std::string header;
  std::string why = exchange(request, &header);
  AuthResult r = why.empty() ? parseAuthHttpResponse(header, user) : tempFail(std::move(why));
  switch (r.verdict) {
    case Verdict::kOk:
      ok_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Verdict::kBadPassword:
    case Verdict::kUnknownUser:
      rejected_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Verdict::kTempFail:
      tempfail_.fetch_add(1, std::memory_order_relaxed);
      break;
  }
  return r;
}

RecipientResult HttpDirectory::recipient(std::string_view address) {
  return recipient(address, filters::SessionFacts{});
}

RecipientResult HttpDirectory::recipient(std::string_view address, const filters::SessionFacts& facts) {
  rcpt_requests_.fetch_add(1, std::memory_order_relaxed);
  const std::string request = buildAuthHttpRecipientRequest(url_, address, facts);
  std::string header;
  std::string why = exchange(request, &header);
  RecipientResult r = RecipientResult::kTempFail;
  if (why.empty()) r = parseAuthHttpRecipientResponse(header, &why);
  if (r == RecipientResult::kTempFail) {
    rcpt_tempfail_.fetch_add(1, std::memory_order_relaxed);
    if (log_limit_.allow())
      log::warn("auth_http recipient check failed",
                {{"error", why}, {"suppressed", log_limit_.suppressed()}});
  }
  return r;
}

std::string HttpDirectory::exchange(const std::string& request, std::string* out) const {
  const Clock::time_point deadline = Clock::now() + timeout_;
  const std::string where = "auth_http " + url_.host_header + ":" + std::to_string(url_.port);

  // Connect: each resolved address in turn, all within the one deadline.
  int fd = -1;
  std::string last_error = "no address";
  std::optional<Socket> sock;
  for (const Address& a : addresses_) {
    if (remainingMs(deadline) == 0) {
      last_error = "timed out";
      break;
    }
    int s = ::socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) {
      last_error = "socket: " + errnoText(errno);
      continue;
    }
    sock.emplace(s);
    if (::connect(s, reinterpret_cast<const sockaddr*>(&a.addr), a.len) == 0) {
      fd = s;
      break;
    }
    if (errno != EINPROGRESS && errno != EINTR) {
      last_error = errnoText(errno);
      sock.reset();
      continue;
    }
    std::string w = waitFor(s, POLLOUT, deadline);
    if (!w.empty()) {
      last_error = w;
      sock.reset();
      continue;
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      last_error = errnoText(err);
      sock.reset();
      continue;
    }
    fd = s;
    break;
  }
  if (fd < 0) return where + ": connect: " + last_error;

  // Send the request.
  std::size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      std::string w = waitFor(fd, POLLOUT, deadline);
      if (!w.empty()) return where + ": send: " + w;
      continue;
    }
    return where + ": send: " + errnoText(n < 0 ? errno : EPIPE);
  }

  // Read up to the blank line after the headers; the body is not read.
  std::string buf;
  buf.reserve(4096);
  char chunk[4096];
  for (;;) {
    std::size_t room = kMaxResponseHeader - buf.size();
    ssize_t n = ::recv(fd, chunk, std::min(room, sizeof chunk), 0);
    if (n > 0) {
      std::size_t from = buf.size() >= 3 ? buf.size() - 3 : 0;
      buf.append(chunk, static_cast<std::size_t>(n));
      if (std::size_t end = headerEndFrom(buf, from); end != 0) {
        buf.resize(end);
        *out = std::move(buf);
        return {};
      }
      if (buf.size() >= kMaxResponseHeader)
        return where + ": response headers over " + std::to_string(kMaxResponseHeader) + " bytes";
      continue;
    }
    if (n == 0) return where + (buf.empty() ? ": closed without a response" : ": truncated response");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      std::string w = waitFor(fd, POLLIN, deadline);
      if (!w.empty()) return where + ": " + (w == "timed out" ? "response timed out" : w);
      continue;
    }
    return where + ": recv: " + errnoText(errno);
  }
}

std::string HttpDirectory::statsText() const {
  return "http_requests=" + std::to_string(requests_.load(std::memory_order_relaxed)) +
         " http_ok=" + std::to_string(ok_.load(std::memory_order_relaxed)) +
         " http_rejected=" + std::to_string(rejected_.load(std::memory_order_relaxed)) +
         " http_tempfail=" + std::to_string(tempfail_.load(std::memory_order_relaxed)) +
         " http_rcpt_requests=" + std::to_string(rcpt_requests_.load(std::memory_order_relaxed)) +
         " http_rcpt_tempfail=" + std::to_string(rcpt_tempfail_.load(std::memory_order_relaxed));
}

}  // namespace mailgate::auth
