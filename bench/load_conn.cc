#include "bench/load_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mailgate::bench {
namespace {

constexpr size_t kMaxLine = 64 * 1024;  // a response line longer than this is an error

// True when [p, p+len) ends with an IMAP literal announcement "{N}" or "{N+}";
// stores N.
bool literalAtEnd(const char* p, size_t len, uint64_t* n) {
  if (len < 3 || p[len - 1] != '}') return false;
  size_t i = len - 1;
  if (i > 0 && p[i - 1] == '+') --i;
  size_t digits_end = i;
  while (i > 0 && p[i - 1] >= '0' && p[i - 1] <= '9') --i;
  if (i == digits_end || i == 0 || p[i - 1] != '{' || digits_end - i > 18) return false;
  uint64_t v = 0;
  for (size_t k = i; k < digits_end; ++k) v = v * 10 + static_cast<uint64_t>(p[k] - '0');
  *n = v;
  return true;
}

std::string sslError(const char* what) {
  std::string s = what;
  unsigned long e = ERR_get_error();
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    s += ": ";
    s += buf;
  }
  ERR_clear_error();
  return s;
}

}  // namespace

Conn::~Conn() {
  closeSocket();
  std::free(in_);
}

void Conn::closeSocket() {
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);  // closing removes it from epoll
    fd_ = -1;
  }
}

void Conn::fail(std::string why) {
  if (terminal()) return;
  error_ = std::move(why);
  phase_ = Phase::kFailed;
  finished_ = Clock::now();
  closeSocket();
}

void Conn::finish() {
  phase_ = Phase::kFinished;
  finished_ = Clock::now();
  closeSocket();
}

bool Conn::start(const ConnParams* params) {
  params_ = params;
  if (in_ == nullptr) in_ = static_cast<char*>(std::malloc(kInSize));
  closeSocket();
  error_.clear();
  out_.clear();
  out_off_ = 0;
  in_begin_ = in_end_ = 0;
  literal_left_ = 0;
  mid_response_ = false;
  tls_want_write_ = false;
  tag_ = 0;
  bytes_in_ = fetch_bytes_ = fetch_mark_ = 0;
  fetch_time_ = {};
  fetches_left_ = params->fetch_repeat;
  started_ = Clock::now();
  phase_ = Phase::kConnecting;
  fd_ = ::socket(params->addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    fail(std::string("socket: ") + std::strerror(errno));
    return false;
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(fd_, params->addr, params->addr_len) == 0) {
    onConnected();
  } else if (errno != EINPROGRESS) {
    fail(std::string("connect: ") + std::strerror(errno));
    return false;
  }
  return !terminal();
}

uint32_t Conn::wantEvents() const {
  uint32_t ev = EPOLLIN;
  if (phase_ == Phase::kConnecting || tls_want_write_ || out_off_ < out_.size()) ev |= EPOLLOUT;
  return ev;
}

void Conn::onEvents(uint32_t events) {
  if (terminal()) return;
  if (phase_ == Phase::kConnecting) {
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return fail(std::string("connect: ") + std::strerror(err));
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
    onConnected();
    return;
  }
  if (phase_ == Phase::kTlsHandshake) {
    continueHandshake();
    return;
  }
  if ((events & EPOLLOUT) != 0 && !flush()) return;
  readAvailable();
}

void Conn::onConnected() {
  if (params_->tls == TlsMode::kImplicit) {
    startTls();
  } else {
    phase_ = Phase::kGreeting;
  }
}

void Conn::startTls() {
  ssl_ = SSL_new(params_->ssl_ctx);
  if (ssl_ == nullptr) return fail(sslError("SSL_new"));
  SSL_set_fd(ssl_, fd_);
  if (params_->sni != nullptr) {  // SSL_set_tlsext_host_name without its C cast
    SSL_ctrl(ssl_, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(params_->sni));
  }
  SSL_set_connect_state(ssl_);
  phase_ = Phase::kTlsHandshake;
  continueHandshake();
}

void Conn::continueHandshake() {
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    tls_want_write_ = false;
    afterHandshake();
    return;
  }
  int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ) {
    tls_want_write_ = false;
  } else if (e == SSL_ERROR_WANT_WRITE) {
    tls_want_write_ = true;
  } else {
    fail(sslError("TLS handshake"));
  }
}

void Conn::afterHandshake() {
  if (params_->tls == TlsMode::kImplicit) {
    phase_ = Phase::kGreeting;
    readAvailable();  // the greeting may already sit in OpenSSL's buffer
  } else {
    sendLogin();
  }
}

void Conn::send(const std::string& command) {
  if (out_off_ == out_.size()) {
    out_.clear();
    out_off_ = 0;
  }
  out_ += command;
  flush();
}

bool Conn::flush() {
  while (out_off_ < out_.size()) {
    const char* p = out_.data() + out_off_;
    size_t n = out_.size() - out_off_;
    if (ssl_ != nullptr) {
      int w = SSL_write(ssl_, p, static_cast<int>(n));
      if (w <= 0) {
        int e = SSL_get_error(ssl_, w);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return true;
        fail(sslError("SSL_write"));
        return false;
      }
      out_off_ += static_cast<size_t>(w);
    } else {
      ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) return true;
        fail(std::string("send: ") + std::strerror(errno));
        return false;
      }
      out_off_ += static_cast<size_t>(w);
    }
  }
  return true;
}

void Conn::readAvailable() {
  for (;;) {
    if (terminal() || phase_ == Phase::kTlsHandshake) return;
    if (in_begin_ > 0 && (in_begin_ == in_end_ || in_end_ == kInSize)) {
      std::memmove(in_, in_ + in_begin_, in_end_ - in_begin_);
      in_end_ -= in_begin_;
      in_begin_ = 0;
    }
    if (in_end_ == kInSize) return fail("response line too long");
    size_t room = kInSize - in_end_;
    ssize_t got;
    if (ssl_ != nullptr) {
      int r = SSL_read(ssl_, in_ + in_end_, static_cast<int>(room));
      if (r <= 0) {
        int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
        if (e == SSL_ERROR_ZERO_RETURN) return fail("connection closed by server (TLS close)");
        return fail(sslError("SSL_read"));
      }
      got = r;
    } else {
      got = ::recv(fd_, in_ + in_end_, room, 0);
      if (got < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        return fail(std::string("recv: ") + std::strerror(errno));
      }
      if (got == 0) {
        if (phase_ == Phase::kLogout) return finish();  // tagged OK lost in a race: fine
        return fail("connection closed by server");
      }
    }
    in_end_ += static_cast<size_t>(got);
    bytes_in_ += static_cast<uint64_t>(got);
    parseInput();
  }
}

void Conn::parseInput() {
  while (!terminal() && in_begin_ < in_end_) {
    if (literal_left_ > 0) {
      size_t take = in_end_ - in_begin_;
      if (take > literal_left_) take = static_cast<size_t>(literal_left_);
      in_begin_ += take;
      literal_left_ -= take;
      continue;
    }
    char* p = in_ + in_begin_;
    size_t avail = in_end_ - in_begin_;
    char* lf = static_cast<char*>(std::memchr(p, '\n', avail));
    if (lf == nullptr) {
      if (avail > kMaxLine) fail("response line too long");
      return;
    }
    size_t len = static_cast<size_t>(lf - p);
    if (len > 0 && p[len - 1] == '\r') --len;
    in_begin_ += static_cast<size_t>(lf - p) + 1;
    uint64_t lit = 0;
    bool has_literal = literalAtEnd(p, len, &lit);
    bool first = !mid_response_;
    mid_response_ = has_literal;
    literal_left_ = has_literal ? lit : 0;
    if (first) onResponse(p, len);
  }
}

void Conn::onResponse(const char* line, size_t len) {
  if (phase_ == Phase::kGreeting) {
    if (len >= 4 && std::memcmp(line, "* OK", 4) == 0) {
      if (params_->tls == TlsMode::kStarttls) {
        sendNext(Phase::kStarttls, "STARTTLS");
      } else {
        sendLogin();
      }
    } else {
      fail("bad greeting: " + std::string(line, len));
    }
    return;
  }
  if (len >= 1 && line[0] == '+') {
    if (phase_ == Phase::kIdleWait) phase_ = Phase::kIdling;
    return;
  }
  if (len >= 1 && line[0] == '*') return;  // untagged data
  // Tagged: "a<N> OK|NO|BAD ..."
  char tag[16];
  int tl = std::snprintf(tag, sizeof tag, "a%u ", tag_);
  if (tl <= 0 || len < static_cast<size_t>(tl) + 2 || std::memcmp(line, tag, static_cast<size_t>(tl)) != 0) {
    return fail("unexpected response: " + std::string(line, len < 200 ? len : 200));
  }
  const char* status = line + tl;
  onTagged(status[0] == 'O' && status[1] == 'K', line, len);
}

void Conn::onTagged(bool ok, const char* line, size_t len) {
  if (!ok) {
    return fail("command refused in phase " + std::to_string(static_cast<int>(phase_)) + ": " +
                std::string(line, len < 200 ? len : 200));
  }
  switch (phase_) {
    case Phase::kStarttls:
      if (in_begin_ != in_end_) return fail("data pipelined after STARTTLS reply");
      startTls();
      return;
    case Phase::kLogin: {
      std::string cmd = "SELECT \"" + params_->mailbox + "\"";
      sendNext(Phase::kSelect, cmd.c_str());
      return;
    }
    case Phase::kFetch: {
      Clock::time_point now = Clock::now();
      fetch_time_ += now - fetch_started_;
      fetch_bytes_ += bytes_in_ - fetch_mark_;
      if (fetches_left_ > 0) break;
      sendNext(Phase::kLogout, "LOGOUT");
      return;
    }
    case Phase::kSelect:
      if (params_->script == Script::kIdle) {
        sendNext(Phase::kIdleWait, "IDLE");
        return;
      }
      if (params_->script == Script::kFetch && fetches_left_ > 0) break;
      sendNext(Phase::kLogout, "LOGOUT");
      return;
    case Phase::kDone:
      sendNext(Phase::kLogout, "LOGOUT");
      return;
    case Phase::kLogout:
      finish();
      return;
    case Phase::kIdleSlot:
    case Phase::kConnecting:
    case Phase::kTlsHandshake:
    case Phase::kGreeting:
    case Phase::kIdleWait:
    case Phase::kIdling:
    case Phase::kFinished:
    case Phase::kFailed:
      return fail("tagged reply in unexpected phase");
  }
  // Another FETCH.
  --fetches_left_;
  fetch_mark_ = bytes_in_ - (in_end_ - in_begin_);  // count only bytes after this point
  fetch_started_ = Clock::now();
  sendNext(Phase::kFetch, "FETCH 1:* BODY.PEEK[]");
}

void Conn::sendLogin() {
  std::string cmd = "LOGIN \"" + params_->user + "\" \"" + params_->password + "\"";
  sendNext(Phase::kLogin, cmd.c_str());
}

void Conn::sendNext(Phase next, const char* command) {
  phase_ = next;
  ++tag_;
  std::string line = "a" + std::to_string(tag_) + " " + command + "\r\n";
  send(line);
}

void Conn::release() {
  if (phase_ != Phase::kIdling) return;
  phase_ = Phase::kDone;  // the tagged reply to IDLE carries the current tag
  send("DONE\r\n");
}

}  // namespace mailgate::bench
