#include "gateway/session/quarantine_release.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "gateway/core/ascii.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"
#include "gateway/session/runtime.h"
#include "gateway/session/session.h"
#include "gateway/session/smtp_node_client.h"

namespace mailgate::session {

namespace {
constexpr int kReplyMs = 60000;
constexpr int kFinalMs = 600000;
constexpr size_t kChunk = 64 * 1024;
constexpr size_t kMaxReply = 64 * 1024;

// "<local@Domain>" → "local@domain" (the domain lower-cased), as RCPT looks it up.
std::string addressOf(const std::string& path) {
  std::string a = path;
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  const size_t at = a.rfind('@');
  if (at != std::string::npos) a = a.substr(0, at + 1) + ascii::lower(std::string_view(a).substr(at + 1));
  return a;
}

struct Reply {
  int code = 0;
  std::string text;      // the last line, without CRLF
  std::string keywords;  // EHLO: every line, upper-cased, '\n'-separated
};

// A blocking SMTP/LMTP conversation with one node.
class NodeConversation {
 public:
  ~NodeConversation() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connect(const io::SockAddr& addr, std::chrono::milliseconds timeout, std::string* why) {
    fd_ = ::socket(addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) return fail(why, "socket");
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr.ss), addr.len) != 0) {
      if (errno != EINPROGRESS) return fail(why, "connect");
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
        *why = "connect: timed out";
        return false;
      }
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
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, kReplyMs) <= 0) {
        *why = "send: timed out";
        return false;
      }
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
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, timeout_ms) <= 0) {
          *why = "no reply in time";
          return false;
        }
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

 private:
  bool fail(std::string* why, const char* what) {
    *why = std::string(what) + ": " + std::strerror(errno);
    return false;
  }
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

// Per recipient: accepted, or why not. `sent_data`: the end of data was sent (a lost
// connection after it may have delivered: no other node is tried then).
struct Attempt {
  std::vector<std::string> accepted;
  std::vector<std::pair<std::string, std::string>> refused;
  bool sent_data = false;
  std::string error;  // the attempt failed as a whole
};

Attempt deliverTo(const DeliveryTarget& t, const filters::QuarantineEntry& e,
                  const std::vector<std::string>& rcpts, const filters::MessageBody& body) {
  Attempt a;
  if (!t.error.empty()) {
    a.error = t.error;
    return a;
  }
  if (t.backend->tls != conf::TlsMode::kNone) {
    a.error = "the node wants TLS, which a release does not speak";
    return a;
  }
  NodeConversation c;
  Reply r;
  std::string why;
  auto failed = [&](const std::string& what) {
    a.error = what;
    return a;
  };
  if (!c.connect(t.addr, t.backend->connect_timeout, &why)) return failed(why);
  if (!c.reply(&r, kReplyMs, &why)) return failed("greeting: " + why);
  if (r.code != 220) return failed("greeting: " + r.text);
  if (!c.send(std::string(t.lmtp ? "LHLO " : "EHLO ") + core::hostName() + "\r\n", &why) ||
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
      a.error = "after the end of data: " + why + " (the node may have taken the message)";
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
}  // namespace

ReleaseOutcome releaseQuarantined(const Runtime& rt, const std::string& id) {
  ReleaseOutcome out;
  filters::QuarantineStore& store = *rt.quarantine;
  switch (store.claim(id)) {
    case filters::QuarantineStore::Claim::kNotFound:
      out.status = ReleaseOutcome::Status::kNotFound;
      return out;
    case filters::QuarantineStore::Claim::kBusy:
      out.status = ReleaseOutcome::Status::kBusy;
      return out;
    case filters::QuarantineStore::Claim::kError:
      out.status = ReleaseOutcome::Status::kError;
      out.error = "the quarantine store did not answer";
      return out;
    case filters::QuarantineStore::Claim::kClaimed:
      break;
  }
  struct Unclaim {
    filters::QuarantineStore& s;
    const std::string& id;
    ~Unclaim() { s.unclaim(id); }
  } unclaim{store, id};

  std::shared_ptr<const filters::MessageBody> body;
  auto got = store.get(id, &body);
  if (!got) {
    out.status =
        got.error() == "not found" ? ReleaseOutcome::Status::kNotFound : ReleaseOutcome::Status::kError;
    out.error = got.error();
    return out;
  }
  const filters::QuarantineEntry& e = got.value();
  const conf::ListenerConfig* listener = rt.listener(e.listener);
  const bool submission = listener && listener->protocol == conf::Protocol::kSubmission;

  // Recipients still to deliver, grouped by the node that serves them now.
  struct Group {
    std::vector<DeliveryTarget> targets;
    std::vector<std::string> rcpts;
  };
  std::map<std::string, Group> groups;
  for (const auto& rcpt : e.rcpts) {
    if (std::find(e.delivered.begin(), e.delivered.end(), rcpt) != e.delivered.end()) continue;
    const std::string address = addressOf(rcpt);
    std::string route_by = address;
    if (!submission) {
      const auth::RecipientAnswer answer = rt.directory->lookupRecipient(address, filters::SessionFacts{});
      if (answer.result != auth::RecipientResult::kLocal) {
        out.failed.emplace_back(rcpt, answer.result == auth::RecipientResult::kTempFail
                                          ? "recipient lookup failed"
                                          : "no longer a local mailbox");
        continue;
      }
      if (!answer.mailbox.empty()) route_by = answer.mailbox;
    }
    routing::Route route = submission ? rt.router->resolve(rt.config->routing.submission_relay, std::string())
                                      : rt.router->route(route_by);
    const std::string key =
        route.primary && route.primary->config ? route.primary->config->name : std::string();
    auto lmtp = [submission](const conf::BackendConfig& bc) { return !submission && bc.deliver != "smtp"; };
    Group& g = groups[key];
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
  }

  std::vector<std::string> delivered = e.delivered;
  for (auto& [key, g] : groups) {
    if (g.targets.empty()) {
      for (const auto& r : g.rcpts) out.failed.emplace_back(r, "no storage node available");
      continue;
    }
    std::string last_error;
    bool done = false;
    for (const DeliveryTarget& t : g.targets) {
      Attempt a = deliverTo(t, e, g.rcpts, *body);
      for (auto& r : a.accepted) {
        delivered.push_back(r);
        out.delivered.push_back(std::move(r));
      }
      for (auto& f : a.refused) out.failed.push_back(std::move(f));
      if (a.error.empty() || a.sent_data) {
        if (!a.error.empty())
          for (const auto& r : g.rcpts) {
            const bool known = std::find(delivered.begin(), delivered.end(), r) != delivered.end() ||
                               std::any_of(out.failed.begin(), out.failed.end(),
                                           [&](const auto& f) { return f.first == r; });
            if (!known) out.failed.emplace_back(r, t.backend->name + ": " + a.error);
          }
        done = true;
        break;
      }
      last_error = t.backend->name + ": " + a.error;
      log::warn("quarantine release: node attempt failed",
                {{"id", id}, {"node", t.backend->name}, {"error", a.error}});
    }
    if (!done)
      for (const auto& r : g.rcpts) out.failed.emplace_back(r, last_error);
  }

  if (out.failed.empty()) {
    if (auto rm = store.remove(id); !rm) {
      // Delivered, but the entry stays: record it so that a later release skips them.
      (void)store.setDelivered(id, delivered);
      out.status = ReleaseOutcome::Status::kError;
      out.error = "delivered, but the entry was not removed: " + rm.error();
      return out;
    }
    filters::quarantineStats().released.fetch_add(1);
    out.status = ReleaseOutcome::Status::kReleased;
    log::info("quarantine released", {{"id", id}, {"recipients", out.delivered.size()}});
    return out;
  }
  if (!out.delivered.empty()) {
    if (auto ok = store.setDelivered(id, delivered); !ok)
      log::error(
          "quarantine release: the delivered recipients were not recorded: a later release delivers to them "
          "again",
          {{"id", id}, {"error", ok.error()}});
  }
  out.status = ReleaseOutcome::Status::kPartial;
  log::warn("quarantine release incomplete: the entry is kept",
            {{"id", id},
             {"delivered", out.delivered.size()},
             {"failed", out.failed.size()},
             {"first_failure", out.failed.front().first + ": " + out.failed.front().second}});
  return out;
}

// --- QuarantineSweeper --------------------------------------------------------------

QuarantineSweeper::QuarantineSweeper(std::shared_ptr<filters::QuarantineStore> store,
                                     std::chrono::milliseconds retention)
    : store_(std::move(store)), retention_(retention) {}

QuarantineSweeper::~QuarantineSweeper() { stop(); }

void QuarantineSweeper::start() {
  std::lock_guard<std::mutex> g(mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { run(); });
}

void QuarantineSweeper::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void QuarantineSweeper::sweepOnce() {
  auto n = store_->expire(filters::wallMs() - retention_.count());
  if (!n)
    log::warn("quarantine retention sweep failed", {{"store", store_->kind()}, {"error", n.error()}});
  else if (n.value())
    log::info("quarantine entries expired", {{"store", store_->kind()}, {"entries", n.value()}});
}

void QuarantineSweeper::run() {
  const auto interval = std::clamp<std::chrono::milliseconds>(retention_ / 2, std::chrono::milliseconds(1000),
                                                              std::chrono::milliseconds(60000));
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    lk.unlock();
    sweepOnce();
    lk.lock();
    cv_.wait_for(lk, interval, [this] { return stop_; });
  }
}

}  // namespace mailgate::session
