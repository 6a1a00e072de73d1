#include "gateway/session/session.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "gateway/core/log.h"
#include "gateway/session/reactor.h"

namespace mailgate::session {

std::vector<Candidate> routeCandidates(const routing::Route& route,
                                       const std::function<uint16_t(const conf::BackendConfig&)>& port) {
  std::vector<Candidate> out;
  for (routing::Backend* b : {route.primary, route.secondary}) {
    if (!b || !b->config || !b->acceptsSessions()) continue;  // drain/down: no new sessions
    const conf::BackendConfig& bc = *b->config;
    const uint16_t p = port(bc);
    if (p == 0) continue;
    Candidate c;
    c.backend = &bc;
    c.up = b->up.load();
    auto addr = io::resolveAddress(bc.host, p);
    if (addr)
      c.addr = addr.value();
    else
      c.error = addr.error();
    out.push_back(std::move(c));
  }
  std::stable_partition(out.begin(), out.end(), [](const Candidate& c) { return c.up; });
  return out;
}

log::RateLimit& authLogLimit() {
  static log::RateLimit limit(50);
  return limit;
}

filters::SessionFacts Session::directoryFacts() {
  // The directory reads neither the recipients accepted so far nor the message:
  // they stay out of the copy (an RCPT must not copy every earlier RCPT).
  std::vector<std::string> rcpts;
  rcpts.swap(facts_.rcpts);
  std::shared_ptr<const filters::MessageBody> message = std::move(facts_.message);
  filters::SessionFacts f = facts_;
  facts_.rcpts.swap(rcpts);
  facts_.message = std::move(message);
  f.secured = clientTlsActive();
  f.tls_version = clientTlsVersion();
  return f;
}

const char* failureName(BackendFailure f) {
  switch (f) {
    case BackendFailure::kConnect:
      return "connect";
    case BackendFailure::kSend:
      return "send";
    case BackendFailure::kTimeout:
      return "timeout";
    case BackendFailure::kProtocol:
      return "protocol";
    case BackendFailure::kTls:
      return "tls";
    case BackendFailure::kTempRefusal:
      return "temporary_refusal";
    case BackendFailure::kAuthRejected:
      return "auth_rejected";
    case BackendFailure::kInternal:
      return "internal";
  }
  return "?";
}

namespace {
void setNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
}  // namespace

Session::Session(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
                 std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener)
    : reactor_(reactor), rt_(std::move(rt)), listener_(listener), slot_(slot), gen_(gen) {
  client_.fd = fd;
  setNoDelay(fd);
  client_ip_ = io::addressHost(peer);
  client_port_ = io::addressPort(peer);
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
    local_ip_ = io::addressHost(local);
    local_port_ = io::addressPort(local);
  }
  id_ = reactor_.newSessionId();
  started_ms_ = reactor_.nowMs();
  last_activity_ = started_ms_;
}

Session::~Session() = default;

namespace {
// A PROXY header comes from a balancer at once; a peer that sends none in this time
// is not one (Dovecot's haproxy_timeout is 3 s).
constexpr uint64_t kProxyHeaderMs = 5000;
}  // namespace

void Session::open() {
  if (!listener_.proxy_protocol) {
    beginConnect();
    return;
  }
  proxy_ = std::make_unique<codec::ProxyHeaderParser>();
  proxy_deadline_ = now() + std::min<uint64_t>(kProxyHeaderMs, static_cast<uint64_t>(listener_.preauth_timeout.count()));
  pauseClient(false);
}

bool Session::takeProxyHeader(std::string_view* bytes) {
  const codec::ProxyFeed f = proxy_->feed(*bytes);
  bytes->remove_prefix(f.consumed);
  if (f.status == codec::ProxyStatus::kNeedMore) return false;
  if (f.status == codec::ProxyStatus::kError) {
    static log::RateLimit rl(20);  // anyone who reaches the listener can trigger this
    if (rl.allow())
      log::info("PROXY protocol header refused", {{"session", id_},
                                                  {"peer", peerText()},
                                                  {"error", proxy_->errorText()}});
    close("proxy_protocol_error");
    return false;
  }
  const codec::ProxyHeader& h = proxy_->header();
  if (h.has_addresses) {
    log::debug("PROXY protocol header", {{"session", id_},
                                         {"peer", peerText()},
                                         {"client", std::string(h.src_ip) + ":" + std::to_string(h.src_port)}});
    client_ip_ = h.src_ip;
    client_port_ = h.src_port;
    local_ip_ = h.dst_ip;
    local_port_ = h.dst_port;
  }
  proxy_.reset();
  proxy_deadline_ = 0;
  beginConnect();
  return !closing_;
}

uint64_t Session::now() const { return reactor_.nowMs(); }

namespace {
log::RateLimit g_refusal_log(50);

const char* protocolName(conf::Protocol p) {
  switch (p) {
    case conf::Protocol::kImap:
      return "imap";
    case conf::Protocol::kPop3:
      return "pop3";
    case conf::Protocol::kSmtp:
    case conf::Protocol::kSubmission:
      return "smtp";
  }
  return "smtp";
}
}  // namespace

void Session::beginConnect() {
  facts_.session_id = id_;
  facts_.listener = listener_.name;
  facts_.protocol = protocolName(listener_.protocol);
  facts_.submission = listener_.protocol == conf::Protocol::kSubmission;
  facts_.client_ip = client_ip_;
  facts_.client_port = client_port_;
  facts_.local_ip = local_ip_;
  facts_.local_port = local_port_;
  if (rt_->filters && !rt_->filters->empty()) {
    if (rt_->filters->usesConnections()) aux_ = std::make_unique<AuxConnections>(reactor_, slot_, gen_);
    chain_.add(rt_->filters->instantiate(
        facts_, filters::FilterServices{&reactor_.workers(), &reactor_.contentWorkers(), aux_.get()}));
  }
  addBuiltinFilters(chain_);
  if (!chain_.wants(filters::Stage::kConnect)) {
    start();
    return;
  }
  pauseClient(true);
  runStage(filters::Stage::kConnect);
}

std::chrono::milliseconds Session::directoryDeadline() const {
  const conf::DirectoryConfig& d = rt_->config->directory;
  const auto t = d.driver == "postgres" ? d.postgres.timeout : d.driver == "http" ? d.http.timeout
                                                                                   : std::chrono::milliseconds(2000);
  return std::max<std::chrono::milliseconds>(std::chrono::milliseconds(5000), 3 * t + std::chrono::milliseconds(2000));
}

std::shared_ptr<const filters::Resumer::Post> Session::chainPoster() {
  Reactor* reactor = &reactor_;
  const uint32_t slot = slot_, gen = gen_;
  return std::make_shared<const filters::Resumer::Post>(
      [reactor, slot, gen](uint64_t token, filters::Resumer::Answer answer) {
        reactor->postToSession(slot, gen, [token, answer = std::move(answer)](Session& s) mutable {
          s.chain_.resume(token, std::move(answer));
        });
      });
}

void Session::logRefusal(filters::Stage stage, const filters::Verdict& v) const {
  if (!g_refusal_log.allow()) return;
  log::info("refused by policy", {{"session", id_},
                                  {"client", peerText()},
                                  {"listener", listener_.name},
                                  {"stage", filters::stageName(stage)},
                                  {"filter", v.filter},
                                  {"action", filters::actionName(v.action)},
                                  {"reason", v.reason},
                                  {"ref", v.ref}});
}

filters::Verdict Session::notifyEvent(filters::EventKind kind, uint64_t credential) {
  filters::Event ev;
  ev.kind = kind;
  ev.credential = credential;
  filters::Verdict v = chain_.notify(ev, facts_);
  if (filters::isTerminal(v.action)) logRefusal(kind == filters::EventKind::kAuthSuccess ? filters::Stage::kAuth
                                                                                         : filters::Stage::kClose,
                                                v);
  return v;
}

void Session::chainDone(filters::Stage stage, filters::Verdict verdict) {
  if (closing_) return;
  if (stage != filters::Stage::kConnect) {
    onStageDone(stage, std::move(verdict));
    return;
  }
  if (!filters::isTerminal(verdict.action)) {
    start();
    return;
  }
  logRefusal(stage, verdict);
  if (ListenerStats* ls = reactor_.listenerStatsOf(slot_)) ls->add(ls->refused_policy);
  // Refused before the greeting or TLS: one plaintext line, then close (on an
  // implicit-TLS listener the client expects a handshake: it gets a plain close).
  if (listener_.tls == conf::TlsMode::kImplicit) {
    close("refused_by_policy");
    return;
  }
  const Rendered r = renderRefusal(verdict, stage);
  writeClient(r.line + "\r\n");
  closeAfterFlush("refused_by_policy");
}

uint8_t Session::auxOf(Side side, const Endpoint& e) const {
  return static_cast<uint8_t>(static_cast<uint8_t>(side) | (e.incarnation << 1));
}

Endpoint* Session::endpointFor(uint8_t aux) {
  if ((aux & 1) == 0) return &client_;
  uint8_t inc = static_cast<uint8_t>(aux >> 1);
  if (backend_ && backend_->incarnation == inc) return backend_.get();
  for (auto& d : dead_backends_)
    if (d->incarnation == inc) return d.get();
  return nullptr;
}

void Session::armRecv(Side side, Endpoint& e) {
  if (e.recv_armed || e.closing || e.fd < 0 || e.eof || e.paused) return;
  io_uring_sqe* sqe = reactor_.ring().sqe();
  io_uring_prep_recv_multishot(sqe, e.fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = io::Ring::kBufGroup;
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kRecv, auxOf(side, e), slot_, gen_}.pack());
  e.ops++;
  e.recv_armed = true;
}

void Session::onRecv(uint8_t aux, int res, uint32_t flags, const char* data) {
  if (AuxConnections::owns(aux)) {
    if (aux_) aux_->onRecv(aux, res, flags, data);
    return;
  }
  Endpoint* e = endpointFor(aux);
  if (!e) return;
  Side side = (aux & 1) ? Side::kBackend : Side::kClient;
  // The protocol may drop this backend (and free it) and connect another, possibly
  // at the same address: compare incarnations, never the pointer.
  const uint8_t inc = e->incarnation;
  if (!(flags & IORING_CQE_F_MORE)) {
    e->ops--;
    e->recv_armed = false;
  }
  if (closing_ || e->closing) {
    maybeRetireEndpoints();
    return;
  }
  if (res == -ENOBUFS) {
    reactor_.stats.recv_nobufs++;
  } else if (res == -ECANCELED) {
    // backpressure pause: re-armed when the peer drains
  } else if (res < 0) {
    endpointEof(side, *e, std::strerror(-res));
    return;
  } else if (res == 0) {
    endpointEof(side, *e, "connection closed");
    return;
  } else {
    e->bytes_in += static_cast<uint64_t>(res);
    last_activity_ = now();
    trimmed_ = false;
    deliver(side, *e, std::string_view(data, static_cast<size_t>(res)));
  }
  if (closing_) return;
  if (side == Side::kBackend && !isBackend(inc)) return;
  if (!e->recv_armed) armRecv(side, *e);
}

void Session::deliver(Side side, Endpoint& e, std::string_view bytes) {
  const uint8_t inc = e.incarnation;
  if (side == Side::kClient && proxy_ && (!takeProxyHeader(&bytes) || bytes.empty())) return;
  if (!e.tls) {
    handlePlain(side, bytes);
    return;
  }
  tls::TlsStream& t = *e.tls;
  t.feed(bytes);
  if (!t.handshakeDone()) {
    tls::TlsEvent ev = t.handshake();
    flush(side, e);
    if (ev == tls::TlsEvent::kError || ev == tls::TlsEvent::kClosed) {
      if (side == Side::kClient) {
        if (ListenerStats* ls = reactor_.listenerStatsOf(slot_))
          ls->tlsFailed(ev == tls::TlsEvent::kClosed ? tls::HandshakeFailure::kClosed : t.failure());
        static log::RateLimit rl(20);  // a client can trigger this at will
        if (rl.allow()) log::info("client TLS handshake failed", {{"session", id_}, {"error", t.lastError()}});
        close("tls_error");
      } else {
        onBackendFailed(BackendFailure::kTls, t.lastError());
      }
      return;
    }
    if (ev == tls::TlsEvent::kWant) return;
    if (side == Side::kClient) {
      if (ListenerStats* ls = reactor_.listenerStatsOf(slot_)) ls->add(ls->tls_handshakes);
      tls_version_ = t.version();
      tls_cipher_ = t.cipher();
      onClientTlsReady();
    } else {
      onBackendTlsReady();
    }
    if (closing_ || (side == Side::kBackend && !isBackend(inc))) return;
  }
  // The reactor's buffer, taken for this delivery (a nested one would find it empty
  // and allocate its own) and given back after it: no session keeps one.
  std::string plain;
  plain.swap(reactor_.plainScratch());
  plain.clear();
  tls::TlsEvent ev = t.read(&plain, 1 << 20);
  flush(side, e);
  if (!plain.empty()) handlePlain(side, plain);
  plain.clear();
  if (plain.capacity() <= (1 << 20) + 16384) reactor_.plainScratch().swap(plain);
  if (closing_ || (side == Side::kBackend && !isBackend(inc))) return;
  if (ev == tls::TlsEvent::kClosed) {
    endpointEof(side, e, "TLS close_notify");
  } else if (ev == tls::TlsEvent::kError) {
    endpointEof(side, e, "TLS error: " + t.lastError());
  }
}

void Session::handlePlain(Side side, std::string_view plain) {
  if (relaying_) {
    if (!plain.empty()) {
      relay_node_spoke_last_ = side == Side::kBackend;
      if (side == Side::kBackend) relay_at_line_end_ = plain.back() == '\n';
    }
    onRelayData(side, plain);
    return;
  }
  if (side == Side::kClient)
    onClientData(plain);
  else
    onBackendData(plain);
}

void Session::endpointEof(Side side, Endpoint& e, const std::string& why) {
  e.eof = true;
  if (side == Side::kClient) {
    if (proxy_) {  // gone before its PROXY header: the protocol never started
      close("client_closed");
      return;
    }
    // Gone in the middle of a TLS handshake it had begun (a ClientHello was read).
    if (client_.tls && !client_.tls->handshakeDone() && !SSL_in_before(client_.tls->ssl()))
      if (ListenerStats* ls = reactor_.listenerStatsOf(slot_)) ls->tlsFailed(tls::HandshakeFailure::kClosed);
    onClientClosed();
    return;
  }
  if (relaying_) {
    closeAfterFlush("backend_closed");
    return;
  }
  onBackendFailed(BackendFailure::kProtocol, why);
}

void Session::writeClient(std::string_view plain) {
  if (closing_ || client_.closing) return;
  if (client_.tls) {
    if (client_.tls->write(plain) != tls::TlsEvent::kOk) {
      close("tls_error");
      return;
    }
  } else {
    client_.out_pending.append(plain);
  }
  flush(Side::kClient, client_);
  updateBackpressure();
}

void Session::writeBackend(std::string_view plain) {
  if (closing_ || !backend_ || backend_->closing) return;
  Endpoint& e = *backend_;
  if (e.tls) {
    if (e.tls->write(plain) != tls::TlsEvent::kOk) {
      if (relaying_)
        close("backend_tls_error");
      else
        onBackendFailed(BackendFailure::kTls, e.tls->lastError());
      return;
    }
  } else {
    e.out_pending.append(plain);
  }
  flush(Side::kBackend, e);
  updateBackpressure();
}

void Session::flush(Side side, Endpoint& e) {
  if (e.tls) e.tls->takeOutput(&e.out_pending);
  if (!e.send_inflight && !e.out_pending.empty() && !e.closing) submitSend(side, e);
}

void Session::submitSend(Side side, Endpoint& e) {
  if (e.inflight_off >= e.out_inflight.size()) {
    e.out_inflight.clear();
    e.inflight_off = 0;
    std::swap(e.out_inflight, e.out_pending);
  }
  io_uring_sqe* sqe = reactor_.ring().sqe();
  io_uring_prep_send(sqe, e.fd, e.out_inflight.data() + e.inflight_off,
                     e.out_inflight.size() - e.inflight_off, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kSend, auxOf(side, e), slot_, gen_}.pack());
  e.ops++;
  e.send_inflight = true;
}

void Session::onSend(uint8_t aux, int res) {
  if (AuxConnections::owns(aux)) {
    if (aux_) aux_->onSend(aux, res);
    return;
  }
  Endpoint* e = endpointFor(aux);
  if (!e) return;
  Side side = (aux & 1) ? Side::kBackend : Side::kClient;
  e->ops--;
  e->send_inflight = false;
  if (e->closing || (closing_ && !(close_after_flush_ && side == Side::kClient))) {
    maybeRetireEndpoints();
    return;
  }
  if (res < 0) {
    if (side == Side::kClient) {
      close("client_send_error");
    } else if (relaying_) {
      closeAfterFlush("backend_send_error");
    } else {
      onBackendFailed(BackendFailure::kSend, std::strerror(-res));
    }
    return;
  }
  e->bytes_out += static_cast<uint64_t>(res);
  e->inflight_off += static_cast<size_t>(res);
  if (e->inflight_off < e->out_inflight.size()) {
    submitSend(side, *e);  // short send: the rest
    return;
  }
  e->out_inflight.clear();
  e->inflight_off = 0;
  if (!e->out_pending.empty()) submitSend(side, *e);
  if (side == Side::kBackend && !relaying_ && e->queued() < kBackendLowWater) {
    onBackendDrained();
    if (closing_) return;
  }
  if (close_after_flush_ && side == Side::kClient) {
    if (client_.queued() == 0 && !client_.send_inflight) {
      close(outcome_ ? outcome_ : "closed");
    }
    return;
  }
  updateBackpressure();
}

void Session::updateBackpressure() {
  if (closing_) return;
  auto apply = [this](Side side, Endpoint& e, bool want_pause) {
    if (e.closing) return;
    if (want_pause == e.paused) {
      if (!want_pause) armRecv(side, e);  // first arm, or re-arm after the kernel ended a multishot
      return;
    }
    e.paused = want_pause;
    if (want_pause) {
      if (e.recv_armed) {
        io_uring_sqe* sqe = reactor_.ring().sqe();
        io_uring_prep_cancel64(sqe, io::Tag{io::Op::kRecv, auxOf(side, e), slot_, gen_}.pack(), 0);
        io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kCancel, auxOf(side, e), slot_, gen_}.pack());
        e.ops++;
      }
    } else {
      armRecv(side, e);
    }
  };
  bool backend_full = backend_ && backend_->queued() > kHighWater;
  bool backend_low = !backend_ || backend_->queued() < kLowWater;
  bool client_full = client_.queued() > kHighWater;
  bool client_low = client_.queued() < kLowWater;
  if (backend_full || client_hold_)
    apply(Side::kClient, client_, true);
  else if (backend_low && !client_hold_)
    apply(Side::kClient, client_, false);
  if (backend_) {
    if (client_full)
      apply(Side::kBackend, *backend_, true);
    else if (client_low)
      apply(Side::kBackend, *backend_, false);
  }
}

void Session::pauseClient(bool pause) {
  client_hold_ = pause;
  updateBackpressure();
}

void Session::onOtherCompletion(uint8_t aux) {
  if (AuxConnections::owns(aux)) {
    if (aux_) aux_->onOther(aux);
    return;
  }
  Endpoint* e = endpointFor(aux);
  if (e) e->ops--;
  maybeRetireEndpoints();
}

bool Session::startClientTls() {
  if (!rt_->server_tls || client_.tls) return false;
  SSL* ssl = rt_->server_tls->newSsl();
  if (!ssl) return false;
  client_.tls = std::make_unique<tls::TlsStream>(ssl);
  return true;
}

bool Session::startBackendTls(const std::string& backend_name) {
  if (!backend_) return false;
  auto it = rt_->backend_tls.find(backend_name);
  if (it == rt_->backend_tls.end()) return false;
  SSL* ssl = it->second->newSsl();
  if (!ssl) return false;
  backend_->tls = std::make_unique<tls::TlsStream>(ssl);
  tls::TlsEvent ev = backend_->tls->handshake();  // ClientHello
  flush(Side::kBackend, *backend_);
  return ev != tls::TlsEvent::kError;
}

void Session::connectBackend(const io::SockAddr& addr, std::chrono::milliseconds timeout) {
  dropBackend();
  backend_ = std::make_unique<Endpoint>();
  Endpoint& e = *backend_;
  next_incarnation_ = static_cast<uint8_t>((next_incarnation_ + 1) & 0x7f);
  e.incarnation = next_incarnation_;
  e.addr = addr;
  e.fd = socket(addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (e.fd < 0) {
    int err = errno;
    backend_.reset();
    onBackendFailed(BackendFailure::kInternal, std::string("socket: ") + std::strerror(err));
    return;
  }
  setNoDelay(e.fd);
  connect_ts_.tv_sec = timeout.count() / 1000;
  connect_ts_.tv_nsec = (timeout.count() % 1000) * 1000000;
  io_uring_sqe* chain[2];
  reactor_.ring().sqes(2, chain);  // taken together: a submit between them would drop the timeout
  io_uring_sqe* sqe = chain[0];
  io_uring_prep_connect(sqe, e.fd, reinterpret_cast<const sockaddr*>(&e.addr.ss), e.addr.len);
  sqe->flags |= IOSQE_IO_LINK;
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kConnect, auxOf(Side::kBackend, e), slot_, gen_}.pack());
  io_uring_sqe* to = chain[1];
  io_uring_prep_link_timeout(to, &connect_ts_, 0);
  io_uring_sqe_set_data64(to, io::Tag{io::Op::kLinkTimeout, auxOf(Side::kBackend, e), slot_, gen_}.pack());
  e.ops += 2;
}

void Session::onConnect(uint8_t aux, int res) {
  if (AuxConnections::owns(aux)) {
    if (aux_) aux_->onConnect(aux, res);
    return;
  }
  Endpoint* e = endpointFor(aux);
  if (!e) return;
  e->ops--;
  if (closing_ || e->closing || e != backend_.get()) {
    maybeRetireEndpoints();
    return;
  }
  if (res < 0) {
    if (res == -ECANCELED)
      onBackendFailed(BackendFailure::kTimeout, "connect timeout");
    else
      onBackendFailed(BackendFailure::kConnect, std::strerror(-res));
    return;
  }
  armRecv(Side::kBackend, *e);
  onBackendConnected();
}

void Session::cancelEndpoint(Side side, Endpoint& e) {
  if (e.closing) return;
  e.closing = true;
  if (e.ops > 0 && e.fd >= 0) {
    io_uring_sqe* sqe = reactor_.ring().sqe();
    io_uring_prep_cancel_fd(sqe, e.fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kCancel, auxOf(side, e), slot_, gen_}.pack());
    e.ops++;
  }
}

void Session::dropBackend() {
  if (!backend_) return;
  cancelEndpoint(Side::kBackend, *backend_);
  dead_backends_.push_back(std::move(backend_));
  maybeRetireEndpoints();
}

void Session::maybeRetireEndpoints() {
  for (size_t i = 0; i < dead_backends_.size();) {
    Endpoint& d = *dead_backends_[i];
    if (d.ops == 0) {
      if (d.fd >= 0) ::close(d.fd);
      dead_backends_.erase(dead_backends_.begin() + static_cast<long>(i));
    } else {
      i++;
    }
  }
}

void Session::trimBuffers() {
  trimmed_ = true;
  auto trim = [](Endpoint& e) {
    if (e.out_pending.empty() && e.out_pending.capacity() > 0) std::string().swap(e.out_pending);
    if (!e.send_inflight && e.out_inflight.capacity() > 0) {
      std::string().swap(e.out_inflight);
      e.inflight_off = 0;
    }
  };
  trim(client_);
  if (backend_) trim(*backend_);
}

void Session::startRelay(std::string_view to_client, std::string_view to_backend) {
  relaying_ = true;
  client_hold_ = false;
  clearTimer();
  last_activity_ = now();
  if (!to_client.empty()) writeClient(to_client);
  if (!to_backend.empty()) onRelayData(Side::kClient, to_backend);
  updateBackpressure();
  armRecv(Side::kClient, client_);
}

void Session::close(const char* outcome) {
  if (retired_) return;
  retired_ = true;
  closing_ = true;
  close_after_flush_ = false;
  if (!outcome_) outcome_ = outcome;
  chain_.cancel();
  chain_timer_at_ = 0;
  if (aux_) aux_->closeAll();
  cancelEndpoint(Side::kClient, client_);
  dropBackend();
  reactor_.retire(this);
}

void Session::closeAfterFlush(const char* outcome) {
  if (closing_) return;
  if (!outcome_) outcome_ = outcome;
  dropBackend();
  if (client_.tls && client_.tls->handshakeDone()) {
    client_.tls->shutdown();
    flush(Side::kClient, client_);
  }
  if (client_.queued() == 0 && !client_.send_inflight) {
    close(outcome_);
    return;
  }
  client_hold_ = true;
  updateBackpressure();
  close_after_flush_ = true;
  closing_ = true;  // no more protocol processing; onSend finishes the close
  clearTimer();
  // A client that never reads must not keep us forever.
  setTimer(now() + 10000);
}

void Session::onTick(uint64_t now_ms) {
  maybeRetireEndpoints();
  if (close_after_flush_) {
    if (timer_at_ && now_ms >= timer_at_) {
      close(outcome_ ? outcome_ : "closed");
    }
    return;
  }
  if (closing_) return;
  if (shutting_down_ && (relaying_ ? relayQuiet() : idleForGoodbye())) {
    sayGoodbye();
    return;
  }
  if (chain_timer_at_ && now_ms >= chain_timer_at_) {
    chain_.onTimer(now_ms);
    if (closing_) return;
  }
  if (proxy_) {
    if (now_ms >= proxy_deadline_) {
      static log::RateLimit rl(20);
      if (rl.allow())
        log::info("no PROXY protocol header in time",
                  {{"session", id_}, {"peer", peerText()}});
      close("proxy_protocol_timeout");
    }
    return;
  }
  if (relaying_) {
    uint64_t idle = now_ms - last_activity_;
    if (idle > static_cast<uint64_t>(listener_.idle_timeout.count())) {
      close("idle_timeout");
      return;
    }
    // Buffers kept warm while bytes flow are given back once the session is quiet.
    if (idle > kTrimAfterMs && !trimmed_) trimBuffers();
    return;
  }
  if (timer_at_ && now_ms >= timer_at_) {
    timer_at_ = 0;
    onTimer();
  }
}

void Session::requestShutdown() {
  if (closing_ || shutting_down_) return;
  shutting_down_ = true;
  if (proxy_) return;  // the protocol has not started: closed at the end of the grace
  if (relaying_ ? relayQuiet() : idleForGoodbye()) sayGoodbye();
}

bool Session::relayQuiet() const {
  // The node's answer to everything the client sent has gone out whole: nothing is
  // queued either way, and the node's last bytes ended a line.
  return relay_node_spoke_last_ && relay_at_line_end_ && client_.queued() == 0 && !client_.send_inflight &&
         (!backend_ || backend_->queued() == 0);
}

void Session::sayGoodbye() {
  if (closing_) return;
  // Not in the middle of a TLS handshake (the line would be plaintext in it), not in
  // the middle of a line the node is sending.
  const bool can_speak = !proxy_ && (!client_.tls || client_.tls->handshakeDone()) &&
                         (!relaying_ || relay_at_line_end_);
  if (can_speak) writeClient(goodbyeLine());
  closeAfterFlush("shutdown");
}

void Session::shutdownExpired() {
  if (closing_) return;
  shutting_down_ = true;
  sayGoodbye();
}

bool Session::reapable() const {
  if (!retired_) return false;
  if (client_.ops) return false;
  if (aux_ && !aux_->idle()) return false;
  if (backend_ && backend_->ops) return false;
  for (const auto& d : dead_backends_)
    if (d->ops) return false;
  return true;
}

void Session::finish() {
  if (finished_) return;
  finished_ = true;
  if (relay_stats_) relay_stats_->active.fetch_sub(1, std::memory_order_relaxed);
  if (client_.fd >= 0) ::close(client_.fd);
  client_.fd = -1;
  if (aux_) aux_->closeFds();
  for (auto& d : dead_backends_)
    if (d->fd >= 0) ::close(d->fd);
  dead_backends_.clear();
  if (backend_ && backend_->fd >= 0) ::close(backend_->fd);
  uint64_t dur = now() - started_ms_;
  log::info("session end", {{"session", id_},
                            {"listener", listener_.name},
                            {"client", peerText()},
                            {"tls_version", tls_version_},
                            {"tls_cipher", tls_cipher_},
                            {"user", user_},
                            {"backend", backend_name_},
                            {"bytes_in", client_.bytes_in},
                            {"bytes_out", client_.bytes_out},
                            {"duration_ms", dur},
                            {"outcome", outcome_ ? outcome_ : "closed"}});
}

}  // namespace mailgate::session
