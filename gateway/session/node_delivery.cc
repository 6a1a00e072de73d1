#include "gateway/session/node_delivery.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "gateway/core/ascii.h"
#include "gateway/core/hostname.h"
#include "gateway/session/runtime.h"
#include "gateway/session/session.h"

namespace mailgate::session {

std::string recipientAddress(const std::string& path) {
  std::string a = path;
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  const size_t at = a.rfind('@');
  if (at != std::string::npos) a = a.substr(0, at + 1) + ascii::lower(std::string_view(a).substr(at + 1));
  return a;
}

namespace {
constexpr int kReplyMs = 60000;
constexpr int kFinalMs = 600000;
constexpr size_t kChunk = 64 * 1024;
constexpr size_t kMaxReply = 64 * 1024;

struct Reply {
  int code = 0;
  std::string text;      // the last line, without CRLF
  std::string keywords;  // EHLO: every line, upper-cased, '\n'-separated
};

// A blocking SMTP/LMTP conversation with one node. Every wait ends at the deadline
// (if any): deadlineHit() then tells why the step failed.
class NodeConversation {
 public:
  explicit NodeConversation(std::chrono::steady_clock::time_point deadline) : deadline_(deadline) {}
  ~NodeConversation() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connect(const io::SockAddr& addr, std::chrono::milliseconds timeout, std::string* why) {
    fd_ = ::socket(addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) return fail(why, "socket");
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr.ss), addr.len) != 0) {
      if (errno != EINPROGRESS) return fail(why, "connect");
      if (!wait(POLLOUT, static_cast<int>(timeout.count()), "connect: timed out", why)) return false;
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) {
        errno = err;
        return fail(why, "connect");
      }
    }
    return true;
  }
  bool send(std::string_view data, std::string* why) {
    while (!data.empty()) {
      if (!wait(POLLOUT, kReplyMs, "send: timed out", why)) return false;
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) return fail(why, "send");
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // One reply (all its lines); false on a timeout, a closed connection or garbage.
  bool reply(Reply* r, int timeout_ms, std::string* why) {
    *r = Reply{};
    for (;;) {
      const size_t eol = buf_.find("\r\n");
      if (eol == std::string::npos) {
        if (buf_.size() > kMaxReply) {
          *why = "reply line too long";
          return false;
        }
        if (!wait(POLLIN, timeout_ms, "no reply in time", why)) return false;
        char tmp[4096];
        const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
          *why = "connection closed by the node";
          return false;
        }
        buf_.append(tmp, static_cast<size_t>(n));
        continue;
      }
      std::string line = buf_.substr(0, eol);
      buf_.erase(0, eol + 2);
      if (line.size() < 3 || !ascii::isDigit(line[0]) || !ascii::isDigit(line[1]) ||
          !ascii::isDigit(line[2]) || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
        *why = "malformed reply from the node";
        return false;
      }
      const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
      if (r->code && code != r->code) {
        *why = "malformed multi-line reply";
        return false;
      }
      r->code = code;
      if (line.size() > 4) r->keywords += ascii::upper(std::string_view(line).substr(4)) + "\n";
      r->text = line;
      if (line.size() == 3 || line[3] == ' ') return true;
    }
  }

  bool deadlineHit() const { return deadline_hit_; }

 private:
  // Polls for `events` at most timeout_ms, and never past the deadline; false (with
  // *why) when it timed out.
  bool wait(short events, int timeout_ms, const char* timed_out, std::string* why) {
    int ms = timeout_ms;
    bool cut = false;
    if (deadline_ != std::chrono::steady_clock::time_point{}) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now()).count();
      if (left <= 0) return expired(why);
      if (left < ms) {
        ms = static_cast<int>(left);
        cut = true;
      }
    }
    pollfd p{fd_, events, 0};
    if (::poll(&p, 1, ms) > 0) return true;
    if (cut) return expired(why);
    *why = timed_out;
    return false;
  }
  bool expired(std::string* why) {
    deadline_hit_ = true;
    *why = kNodeDeadlineError;
    return false;
  }
  bool fail(std::string* why, const char* what) {
    *why = std::string(what) + ": " + std::strerror(errno);
    return false;
  }
  std::chrono::steady_clock::time_point deadline_;
  bool deadline_hit_ = false;
  int fd_ = -1;
  std::string buf_;
};

bool offers(const Reply& ehlo, std::string_view kw) {
  size_t pos = 0;
  const std::string& k = ehlo.keywords;
  while (pos < k.size()) {
    const size_t nl = k.find('\n', pos);
    const std::string_view line = std::string_view(k).substr(pos, nl - pos);
    if (line == kw || (line.size() > kw.size() && line.substr(0, kw.size()) == kw && line[kw.size()] == ' '))
      return true;
    pos = nl == std::string::npos ? k.size() : nl + 1;
  }
  return false;
}

}  // namespace

NodeAttempt deliverToNode(const DeliveryTarget& t, const NodeEnvelope& e, const std::vector<std::string>& rcpts,
                          const filters::MessageBody& body) {
  NodeAttempt a;
  if (!t.error.empty()) {
    a.error = t.error;
    return a;
  }
  if (t.backend->tls != conf::TlsMode::kNone) {
    a.error = "the node wants TLS, which this delivery does not speak";
    return a;
  }
  NodeConversation c(e.deadline);
  Reply r;
  std::string why;
  auto failed = [&](const std::string& what) {
    a.error = c.deadlineHit() ? std::string(kNodeDeadlineError) : what;
    return a;
  };
  if (!c.connect(t.addr, t.backend->connect_timeout, &why)) return failed(why);
  if (!c.reply(&r, kReplyMs, &why)) return failed("greeting: " + why);
  if (r.code != 220) return failed("greeting: " + r.text);
  if (!c.send(std::string(t.lmtp ? "LHLO " : "EHLO ") + (e.hostname.empty() ? core::hostName() : e.hostname) + "\r\n", &why) ||
      !c.reply(&r, kReplyMs, &why))
    return failed("hello: " + why);
  if (r.code != 250) return failed("hello: " + r.text);
  const Reply hello = r;
  std::string mail = "MAIL FROM:" + (e.mail_from.empty() ? std::string("<>") : e.mail_from);
  if (e.body_8bit && offers(hello, "8BITMIME")) mail += " BODY=8BITMIME";
  if (e.smtputf8) {
    if (!offers(hello, "SMTPUTF8")) return failed("the node does not offer SMTPUTF8");
    mail += " SMTPUTF8";
  }
  if (!c.send(mail + "\r\n", &why) || !c.reply(&r, kReplyMs, &why)) return failed("MAIL: " + why);
  if (r.code != 250) return failed("MAIL: " + r.text);
  std::vector<std::string> taken;  // recipients the node took at RCPT
  for (const auto& rcpt : rcpts) {
    if (!c.send("RCPT TO:" + rcpt + "\r\n", &why) || !c.reply(&r, kReplyMs, &why))
      return failed("RCPT: " + why);
    if (r.code == 250 || r.code == 251)
      taken.push_back(rcpt);
    else
      a.refused.emplace_back(rcpt, r.text);
  }
  if (taken.empty()) {
    (void)c.send("QUIT\r\n", &why);
    return a;
  }
  if (!c.send("DATA\r\n", &why) || !c.reply(&r, kReplyMs, &why)) return failed("DATA: " + why);
  if (r.code != 354) return failed("DATA: " + r.text);
  // The body, dot-stuffed, then CRLF.CRLF.
  std::string chunk, out;
  bool line_start = true;
  char last = '\n';
  for (uint64_t off = 0; off < body.size();) {
    if (!body.read(off, kChunk, &chunk) || chunk.empty()) return failed("cannot read the stored message");
    off += chunk.size();
    out.clear();
    for (char ch : chunk) {
      if (line_start && ch == '.') out.push_back('.');
      out.push_back(ch);
      line_start = ch == '\n';
      last = ch;
    }
    if (!c.send(out, &why)) return failed("body: " + why);
  }
  a.sent_data = true;
  if (!c.send(last == '\n' || body.size() == 0 ? ".\r\n" : "\r\n.\r\n", &why))
    return failed("end of data: " + why);
  // LMTP: one reply per recipient taken; SMTP: one for all.
  const size_t replies = t.lmtp ? taken.size() : 1;
  for (size_t i = 0; i < replies; ++i) {
    if (!c.reply(&r, kFinalMs, &why)) {
      a.error = c.deadlineHit() ? std::string(kNodeDeadlineError)
                                : "after the end of data: " + why + " (the node may have taken the message)";
      return a;
    }
    if (t.lmtp) {
      if (r.code == 250)
        a.accepted.push_back(taken[i]);
      else
        a.refused.emplace_back(taken[i], r.text);
    } else if (r.code == 250) {
      a.accepted = taken;
    } else {
      for (const auto& rc : taken) a.refused.emplace_back(rc, r.text);
    }
  }
  (void)c.send("QUIT\r\n", &why);
  return a;
}

RoutedRecipients routeRecipients(const Runtime& rt, const std::vector<std::string>& rcpts, bool relay,
                                 bool remote_to_relay) {
  RoutedRecipients out;
  const std::string& relay_name = rt.config->routing.submission_relay;
  auto add = [&](const std::string& rcpt, routing::Route route, bool via_relay) {
    const std::string key =
        (via_relay ? "relay:" : "") +
        (route.primary && route.primary->config ? route.primary->config->name : std::string());
    auto lmtp = [via_relay](const conf::BackendConfig& bc) { return !via_relay && bc.deliver != "smtp"; };
    RecipientGroup& g = out.groups[key];
    if (g.rcpts.empty()) {
      for (Candidate& cand : routeCandidates(route, [&](const conf::BackendConfig& bc) {
             return lmtp(bc) ? bc.ports.lmtp : bc.ports.smtp;
           })) {
        DeliveryTarget t;
        static_cast<Candidate&>(t) = std::move(cand);
        t.lmtp = lmtp(*t.backend);
        g.targets.push_back(std::move(t));
      }
    }
    g.rcpts.push_back(rcpt);
  };
  for (const auto& rcpt : rcpts) {
    if (relay) {
      add(rcpt, rt.router->resolve(relay_name, std::string()), true);
      continue;
    }
    const std::string address = recipientAddress(rcpt);
    const auth::RecipientAnswer answer = rt.directory->lookupRecipient(address, filters::SessionFacts{});
    if (answer.result == auth::RecipientResult::kTempFail) {
      out.unrouted_temporary.emplace_back(rcpt, "451 4.3.0 recipient lookup failed");
      continue;
    }
    if (answer.result != auth::RecipientResult::kLocal) {
      if (remote_to_relay && !relay_name.empty()) {
        add(rcpt, rt.router->resolve(relay_name, std::string()), true);
        continue;
      }
      out.unrouted.emplace_back(rcpt, remote_to_relay ? "550 5.4.4 not a local mailbox and no routing.submission_relay"
                                                      : "550 5.1.1 no longer a local mailbox");
      continue;
    }
    add(rcpt, rt.router->route(answer.mailbox.empty() ? address : answer.mailbox), false);
  }
  return out;
}

}  // namespace mailgate::session
