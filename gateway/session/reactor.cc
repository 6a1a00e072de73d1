#include "gateway/session/reactor.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include "gateway/core/log.h"
#include "gateway/session/imap_session.h"
#include "gateway/session/pop3_session.h"
#include "gateway/session/runtime.h"
#include "gateway/session/session.h"
#include "gateway/session/smtp_session.h"

namespace mailgate::session {

namespace {
constexpr unsigned kTickMs = 100;
constexpr uint64_t kGoodbyeFlushMs = 2000;  // after server.shutdown_grace, for the goodbye lines to go out
constexpr size_t kMaxSessions = (1u << 24) - 1;
}  // namespace

Reactor::Reactor(unsigned index, io::WorkerPool& workers, io::WorkerPool& content)
    : index_(index), workers_(workers), content_(content) {
  std::random_device rd;
  sid_base_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

Reactor::~Reactor() {
  for (auto& l : listen_)
    if (l.fd >= 0) ::close(l.fd);
}

void Reactor::updateClock() {
  now_ms_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now().time_since_epoch())
                                      .count());
}

std::string Reactor::newSessionId() {
  // base64url (RFC 4648 §5): the id names the SMTP queue id too, which is also a
  // file name in the queue's spool directory and a path segment of the admin API.
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  uint64_t v = sid_base_ ^ (++sid_counter_ * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(index_) << 58);
  std::string s;
  for (int i = 0; i < 11; i++) {
    s += kAlphabet[v & 63];
    v >>= 6;
  }
  return s;
}

Result<io::Ring::Backend> chooseIoBackend(conf::IoBackend want) {
  using B = io::Ring::Backend;
  switch (want) {
    case conf::IoBackend::kEpoll:
      log::info("reactor: epoll", {{"io", "epoll"}, {"reason", "server.io: epoll"}});
      return B::kEpoll;
    case conf::IoBackend::kIoUring: {
      std::string why = io::probeIoUring();
      if (!why.empty()) return Error{"server.io is io_uring, but io_uring is unavailable: " + why};
      log::info("reactor: io_uring", {{"io", "io_uring"}, {"reason", "server.io: io_uring"}});
      return B::kIoUring;
    }
    case conf::IoBackend::kAuto: {
      std::string why = io::probeIoUring();
      if (why.empty()) {
        log::info("reactor: io_uring",
                  {{"io", "io_uring"}, {"reason", "server.io: auto, io_uring available"}});
        return B::kIoUring;
      }
      log::warn("reactor: epoll, io_uring is unavailable", {{"io", "epoll"}, {"reason", why}});
      return B::kEpoll;
    }
  }
  return Error{"unknown server.io"};
}

Result<bool> Reactor::init(const std::vector<std::pair<std::string, io::SockAddr>>& listen,
                           io::Ring::Backend io) {
  // The ring itself is made on the reactor's thread (run()); chooseIoBackend() has
  // found out, while start-up could still stop cleanly, which kind this kernel allows.
  io_ = io;
  for (const auto& [name, addr] : listen) {
    auto fd = io::openListener(addr, 1024);
    if (!fd) return Error{"listener " + name + ": " + fd.error()};
    listen_.push_back(ListenSocket{name, listenerStats(name), fd.value(), false});
  }
  updateClock();
  heartbeat_ms_.store(now_ms_, std::memory_order_relaxed);
  return true;
}

void Reactor::armAccept(size_t i) {
  ListenSocket& l = listen_[i];
  if (l.armed || l.fd < 0 || stopping_) return;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_multishot_accept(sqe, l.fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kAccept, static_cast<uint8_t>(i), 0, 0}.pack());
  l.armed = true;
}

void Reactor::armTick() {
  tick_ts_.tv_sec = 0;
  tick_ts_.tv_nsec = kTickMs * 1000000L;
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kTick, 0, 0, 0}.pack());
}

void Reactor::armWake() {
  io_uring_sqe* sqe = ring_.sqe();
  io_uring_prep_poll_multishot(sqe, mailbox_.fd(), POLLIN);
  io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kWake, 0, 0, 0}.pack());
}

void Reactor::requestStop(std::chrono::milliseconds grace) {
  post([this, grace] {
    if (stopping_) return;
    stopping_ = true;
    stop_deadline_ = now_ms_ + static_cast<uint64_t>(grace.count());
    for (auto& l : listen_) {
      if (l.fd < 0) continue;
      if (l.armed) {
        io_uring_sqe* sqe = ring_.sqe();
        io_uring_prep_cancel_fd(sqe, l.fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, io::Tag{io::Op::kCancel, 0, 0, 0}.pack());
      }
      ::shutdown(l.fd, SHUT_RDWR);
    }
    log::info("reactor stopping", {{"reactor", index_}, {"sessions", live_}});
    // Each session says its protocol's goodbye when it is idle (at once for most).
    for (size_t i = 0; i < slots_.size(); i++)
      if (Session* s = slots_[i]; s && !s->closing()) s->requestShutdown();
  });
}

void Reactor::postToSession(uint32_t slot, uint32_t gen, std::function<void(Session&)> fn) {
  post([this, slot, gen, fn = std::move(fn)] {
    if (slot >= slots_.size() || !slots_[slot] || gens_[slot] != gen || slots_[slot]->closing()) {
      stats.late_worker_answers++;
      return;
    }
    fn(*slots_[slot]);
  });
}

void Reactor::retire(Session* s) { retired_.push_back(s); }

void Reactor::reap() {
  for (size_t i = 0; i < retired_.size();) {
    Session* s = retired_[i];
    if (s->reapable()) {
      s->finish();
      uint32_t slot = s->slot();
      slots_[slot] = nullptr;
      gens_[slot] = (gens_[slot] + 1) & io::Tag::kMask24;
      if (gens_[slot] == 0) gens_[slot] = 1;
      free_.push_back(slot);
      if (ListenerStats* ls = slot_listener_[slot]) ls->active.fetch_sub(1, std::memory_order_relaxed);
      slot_listener_[slot] = nullptr;
      live_--;
      stats.live.store(live_, std::memory_order_relaxed);
      delete s;
      retired_[i] = retired_.back();
      retired_.pop_back();
    } else {
      i++;
    }
  }
}

void Reactor::onAccept(size_t i, int res, uint32_t flags) {
  ListenSocket& l = listen_[i];
  if (!(flags & IORING_CQE_F_MORE)) l.armed = false;
  if (res < 0) {
    if (res != -ECANCELED) {
      stats.accept_errors++;
      l.stats->add(l.stats->accept_errors);
      static log::RateLimit rl(1);
      if (rl.allow()) log::warn("accept failed", {{"listener", l.listener}, {"error", std::strerror(-res)}});
      accept_rearm_needed_ = true;  // EMFILE and friends: retry on the next tick
    }
    return;
  }
  int fd = res;
  if (stopping_) {
    ::close(fd);
    return;
  }
  stats.accepted++;
  auto rt = currentRuntime();
  const conf::ListenerConfig* lc = rt ? rt->listener(l.listener) : nullptr;
  if (!lc || live_ >= kMaxSessions) {
    if (lc) l.stats->add(l.stats->refused_capacity);
    ::close(fd);
    return;
  }
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) {
    ::close(fd);
    return;
  }
  uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    slot = static_cast<uint32_t>(slots_.size());
    slots_.push_back(nullptr);
    gens_.push_back(1);
    slot_listener_.push_back(nullptr);
  }
  Session* s = nullptr;
  switch (lc->protocol) {
    case conf::Protocol::kImap:
      s = new ImapSession(*this, slot, gens_[slot], fd, peer, rt, *lc);
      break;
    case conf::Protocol::kPop3:
      s = new Pop3Session(*this, slot, gens_[slot], fd, peer, rt, *lc);
      break;
    case conf::Protocol::kSmtp:
    case conf::Protocol::kSubmission:
      s = new SmtpSession(*this, slot, gens_[slot], fd, peer, rt, *lc);
      break;
  }
  if (!s) {
    ::close(fd);
    free_.push_back(slot);
    return;
  }
  slots_[slot] = s;
  l.stats->add(l.stats->accepted);
  l.stats->active.fetch_add(1, std::memory_order_relaxed);
  slot_listener_[slot] = l.stats;
  live_++;
  stats.live.store(live_, std::memory_order_relaxed);
  s->open();
}

void Reactor::onTick() {
  updateClock();
  heartbeat_ms_.store(now_ms_, std::memory_order_relaxed);
  for (Session* s : slots_)
    if (s) s->onTick(now_ms_);
  if (accept_rearm_needed_ && !stopping_) {
    accept_rearm_needed_ = false;
    for (size_t i = 0; i < listen_.size(); i++) armAccept(i);
  }
  if (stopping_ && now_ms_ >= stop_deadline_) {
    // The grace is over: the goodbye, then a short while for it to reach the client.
    for (Session* s : slots_)
      if (s && !s->closing()) s->shutdownExpired();
    if (now_ms_ >= stop_deadline_ + kGoodbyeFlushMs)
      for (Session* s : slots_)
        if (s) s->forceClose("shutdown");
  }
  armTick();
}

void Reactor::dispatch(io_uring_cqe* cqe) {
  io::Tag tag = io::Tag::unpack(cqe->user_data);
  int res = cqe->res;
  uint32_t flags = cqe->flags;
  const char* data = nullptr;
  int bid = -1;
  if (flags & IORING_CQE_F_BUFFER) {
    bid = static_cast<int>(flags >> IORING_CQE_BUFFER_SHIFT);
    data = ring_.buffer(static_cast<uint16_t>(bid));
  }
  switch (tag.op) {
    case io::Op::kAccept:
      if (tag.aux < listen_.size()) onAccept(tag.aux, res, flags);
      break;
    case io::Op::kTick:
      onTick();
      break;
    case io::Op::kWake:
      mailbox_.drain();
      if (!(flags & IORING_CQE_F_MORE)) armWake();
      break;
    case io::Op::kRecv:
    case io::Op::kSend:
    case io::Op::kConnect:
    case io::Op::kLinkTimeout:
    case io::Op::kCancel: {
      if (tag.op == io::Op::kCancel && tag.slot == 0 && tag.gen == 0) break;  // listener cancel
      Session* s = tag.slot < slots_.size() ? slots_[tag.slot] : nullptr;
      if (!s || gens_[tag.slot] != tag.gen) {
        stats.stale_completions++;
        break;
      }
      if (tag.op == io::Op::kRecv)
        s->onRecv(tag.aux, res, flags, data);
      else if (tag.op == io::Op::kSend)
        s->onSend(tag.aux, res);
      else if (tag.op == io::Op::kConnect)
        s->onConnect(tag.aux, res);
      else
        s->onOtherCompletion(tag.aux);
      break;
    }
  }
  if (bid >= 0) ring_.recycle(static_cast<uint16_t>(bid));
}

void Reactor::run() {
  if (auto r = ring_.init(io::Ring::kEntries, io_); !r) {
    log::error("reactor cannot set up its ring",
               {{"reactor", index_}, {"io", io::Ring::backendName(io_)}, {"error", r.error()}});
    return;
  }
  for (size_t i = 0; i < listen_.size(); i++) armAccept(i);
  armTick();
  armWake();
  for (;;) {
    int r = ring_.submitAndWait(1);
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN && r != -ETIME) {
      static log::RateLimit rl(1);
      if (rl.allow())
        log::error("ring submit and wait failed",
                   {{"io", io::Ring::backendName(io_)}, {"error", std::strerror(-r)}});
      if (++submit_errors_ > 1000) {
        log::error("the ring keeps failing, reactor stops", {{"reactor", index_}});
        for (Session* s : slots_)
          if (s && !s->closing()) s->forceClose("internal_error");
        break;
      }
      continue;
    }
    submit_errors_ = 0;
    updateClock();
    ring_.forEachCqe([this](io_uring_cqe* cqe) { dispatch(cqe); });
    reap();
    if (stopping_ && live_ == 0) break;
  }
  for (auto& l : listen_)
    if (l.fd >= 0) {
      ::close(l.fd);
      l.fd = -1;
    }
  ring_.close();
}

}  // namespace mailgate::session
