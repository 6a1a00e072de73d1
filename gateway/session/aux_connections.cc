#include "gateway/session/aux_connections.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "conf/config.h"
#include "gateway/io/tag.h"
#include "gateway/session/reactor.h"
#include "gateway/session/session.h"

namespace mailgate::session {

namespace {
constexpr size_t kMaxQueued = 4u << 20;  // a filter that queues more is told no

bool toSockAddr(const conf::ServiceEndpoint& ep, io::SockAddr* out) {
  *out = io::SockAddr{};
  if (ep.unix_socket) {
    auto* un = reinterpret_cast<sockaddr_un*>(&out->ss);
    un->sun_family = AF_UNIX;
    if (ep.path.size() >= sizeof un->sun_path) return false;
    std::memcpy(un->sun_path, ep.path.data(), ep.path.size());
    out->len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + ep.path.size() + 1);
    return true;
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out->ss);
  if (inet_pton(AF_INET, ep.host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(ep.port);
    out->len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out->ss);
  *out = io::SockAddr{};
  if (inet_pton(AF_INET6, ep.host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(ep.port);
    out->len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}
}  // namespace

AuxConnections::~AuxConnections() { closeFds(); }

filters::ConnectionId AuxConnections::open(std::string_view address, std::chrono::milliseconds timeout,
                                           filters::ConnectionHandler* handler, std::string* error) {
  auto fail = [error](std::string why) {
    if (error) *error = std::move(why);
    return filters::ConnectionId{0};
  };
  if (closed_all_) return fail("the session is closing");
  size_t index = conns_.size();
  for (size_t i = 0; i < conns_.size(); i++)
    if (conns_[i].state == State::kFree) {
      index = i;
      break;
    }
  if (index == conns_.size()) return fail("every connection of the session is in use");
  conf::ServiceEndpoint ep;
  std::string why;
  if (!conf::parseServiceEndpoint(address, &ep, &why)) return fail(why);
  Conn& c = conns_[index];
  io::SockAddr addr;
  if (!toSockAddr(ep, &addr)) return fail("not a numeric address");
  const int fd = socket(addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(std::string("socket: ") + std::strerror(errno));
  if (!ep.unix_socket) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  const uint8_t inc = static_cast<uint8_t>(c.incarnation % 31 + 1);
  c = Conn{};
  c.incarnation = inc;
  c.fd = fd;
  c.addr = addr;
  c.state = State::kConnecting;
  c.handler = handler;
  if (++serial_ >= (1u << 30)) serial_ = 1;
  c.id = (serial_ << 2) | static_cast<uint32_t>(index);
  const int64_t ms = std::max<int64_t>(1, timeout.count());
  c.connect_ts.tv_sec = ms / 1000;
  c.connect_ts.tv_nsec = (ms % 1000) * 1000000;
  io_uring_sqe* chain[2];
  reactor_.ring().sqes(2, chain);  // taken together: a submit between them would drop the timeout
  io_uring_prep_connect(chain[0], c.fd, reinterpret_cast<const sockaddr*>(&c.addr.ss), c.addr.len);
  chain[0]->flags |= IOSQE_IO_LINK;
  io_uring_sqe_set_data64(chain[0], io::Tag{io::Op::kConnect, auxOf(c, index), slot_, gen_}.pack());
  io_uring_prep_link_timeout(chain[1], &c.connect_ts, 0);
  io_uring_sqe_set_data64(chain[1], io::Tag{io::Op::kLinkTimeout, auxOf(c, index), slot_, gen_}.pack());
  c.ops += 2;
  return c.id;
}

AuxConnections::Conn* AuxConnections::byId(filters::ConnectionId id) {
  if (id == 0) return nullptr;
  Conn& c = conns_[id & 3];
  if (c.id != id || (c.state != State::kConnecting && c.state != State::kOpen)) return nullptr;
  return &c;
}

const AuxConnections::Conn* AuxConnections::byId(filters::ConnectionId id) const {
  return const_cast<AuxConnections*>(this)->byId(id);
}

AuxConnections::Conn* AuxConnections::byAux(uint8_t aux, size_t* index) {
  *index = (aux >> 1) & 3;
  Conn& c = conns_[*index];
  if (c.state == State::kFree || c.incarnation != (aux >> 3)) {
    reactor_.stats.stale_completions++;
    return nullptr;
  }
  return &c;
}

bool AuxConnections::write(filters::ConnectionId id, std::string_view bytes) {
  Conn* c = byId(id);
  if (!c || c->send_failed) return false;
  if (c->out_pending.size() + c->out_inflight.size() - c->inflight_off + bytes.size() > kMaxQueued)
    return false;
  c->out_pending.append(bytes);
  if (c->state == State::kOpen && !c->send_inflight) submitSend(*c, id & 3);
  return true;
}

size_t AuxConnections::queued(filters::ConnectionId id) const {
  const Conn* c = byId(id);
  return c ? c->out_pending.size() + c->out_inflight.size() - c->inflight_off : 0;
}

void AuxConnections::close(filters::ConnectionId id) {
  if (Conn* c = byId(id)) beginClose(*c, id & 3);
}

std::function<void(std::function<void()>)> AuxConnections::poster() {
  Reactor* reactor = &reactor_;
  const uint32_t slot = slot_, gen = gen_;
  return [reactor, slot, gen](std::function<void()> fn) {
    reactor->postToSession(slot, gen, [fn = std::move(fn)](Session&) { fn(); });
  };
}

void AuxConnections::armRecv(Conn& c, size_t index) {
  if (c.recv_armed || c.state != State::kOpen) return;
  io_uring_sqe* sqe = reactor_.ring().sqe();
  io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = io::Ring::kBufGroup;
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kRecv, auxOf(c, index), slot_, gen_}.pack());
  c.ops++;
  c.recv_armed = true;
}

void AuxConnections::submitSend(Conn& c, size_t index) {
  if (c.inflight_off >= c.out_inflight.size()) {
    c.out_inflight.clear();
    c.inflight_off = 0;
    std::swap(c.out_inflight, c.out_pending);
  }
  if (c.out_inflight.empty()) return;
  io_uring_sqe* sqe = reactor_.ring().sqe();
  io_uring_prep_send(sqe, c.fd, c.out_inflight.data() + c.inflight_off,
                     c.out_inflight.size() - c.inflight_off, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kSend, auxOf(c, index), slot_, gen_}.pack());
  c.ops++;
  c.send_inflight = true;
}

void AuxConnections::beginClose(Conn& c, size_t index) {
  if (c.state == State::kClosing || c.state == State::kFree) return;
  c.state = State::kClosing;
  c.handler = nullptr;
  if (c.ops > 0 && c.fd >= 0) {
    io_uring_sqe* sqe = reactor_.ring().sqe();
    io_uring_prep_cancel_fd(sqe, c.fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kCancel, auxOf(c, index), slot_, gen_}.pack());
    c.ops++;
  }
  maybeFree(c);
}

void AuxConnections::maybeFree(Conn& c) {
  if (c.state != State::kClosing || c.ops > 0) return;
  if (c.fd >= 0) ::close(c.fd);
  const uint8_t inc = c.incarnation;
  c = Conn{};
  c.incarnation = inc;  // the next one in this place takes the one after
}

void AuxConnections::end(Conn& c, size_t index, filters::ConnectionEnd how, const std::string& detail) {
  filters::ConnectionHandler* h = closed_all_ ? nullptr : c.handler;
  const filters::ConnectionId id = c.id;
  beginClose(c, index);
  if (h) h->onClosed(id, how, detail);
}

void AuxConnections::onConnect(uint8_t aux, int res) {
  size_t index;
  Conn* c = byAux(aux, &index);
  if (!c) return;
  c->ops--;
  if (c->state != State::kConnecting) {
    maybeFree(*c);
    return;
  }
  if (res < 0) {
    end(*c, index,
        res == -ECANCELED ? filters::ConnectionEnd::kConnectTimeout : filters::ConnectionEnd::kConnectFailed,
        res == -ECANCELED ? std::string("connect timeout") : std::string(std::strerror(-res)));
    return;
  }
  c->state = State::kOpen;
  armRecv(*c, index);
  if (!c->out_pending.empty()) submitSend(*c, index);
  if (!closed_all_ && c->handler) c->handler->onConnected(c->id);
}

void AuxConnections::onRecv(uint8_t aux, int res, uint32_t flags, const char* data) {
  size_t index;
  Conn* c = byAux(aux, &index);
  if (!c) return;
  if (!(flags & IORING_CQE_F_MORE)) {
    c->ops--;
    c->recv_armed = false;
  }
  if (c->state != State::kOpen) {
    maybeFree(*c);
    return;
  }
  if (res == -ENOBUFS) {
    reactor_.stats.recv_nobufs++;
  } else if (res < 0) {
    end(*c, index, filters::ConnectionEnd::kError, std::strerror(-res));
    return;
  } else if (res == 0) {
    if (c->send_failed)
      end(*c, index, filters::ConnectionEnd::kError, c->send_error);
    else
      end(*c, index, filters::ConnectionEnd::kClosed, "connection closed");
    return;
  } else {
    const filters::ConnectionId id = c->id;
    if (!closed_all_ && c->handler) c->handler->onData(id, std::string_view(data, static_cast<size_t>(res)));
    if (c->id != id || c->state != State::kOpen) return;  // closed (perhaps reopened) by the handler
  }
  if (!c->recv_armed) armRecv(*c, index);
}

void AuxConnections::onSend(uint8_t aux, int res) {
  size_t index;
  Conn* c = byAux(aux, &index);
  if (!c) return;
  c->ops--;
  c->send_inflight = false;
  if (c->state != State::kOpen) {
    maybeFree(*c);
    return;
  }
  if (res < 0) {
    // The peer may have answered and closed (a scanner refusing a stream too long):
    // its answer is still to be read, so the receive side reports the end.
    c->send_failed = true;
    c->send_error = std::strerror(-res);
    c->out_pending.clear();
    c->out_inflight.clear();
    c->inflight_off = 0;
    if (!c->recv_armed) end(*c, index, filters::ConnectionEnd::kError, c->send_error);
    return;
  }
  c->inflight_off += static_cast<size_t>(res);
  if (c->inflight_off < c->out_inflight.size()) {
    submitSend(*c, index);  // short send: the rest
    return;
  }
  c->out_inflight.clear();
  c->inflight_off = 0;
  if (!c->out_pending.empty()) {
    submitSend(*c, index);
    return;
  }
  if (!closed_all_ && c->handler) c->handler->onDrained(c->id);
}

void AuxConnections::onOther(uint8_t aux) {
  size_t index;
  Conn* c = byAux(aux, &index);
  if (!c) return;
  c->ops--;
  maybeFree(*c);
}

void AuxConnections::closeAll() {
  closed_all_ = true;
  for (size_t i = 0; i < conns_.size(); i++) beginClose(conns_[i], i);
}

bool AuxConnections::idle() const {
  for (const Conn& c : conns_)
    if (c.ops > 0) return false;
  return true;
}

void AuxConnections::closeFds() {
  for (Conn& c : conns_) {
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
  }
}

unsigned AuxConnections::inUse() const {
  unsigned n = 0;
  for (const Conn& c : conns_)
    if (c.state != State::kFree) n++;
  return n;
}

}  // namespace mailgate::session
