#pragma once
// A session's connections to outside services (scanner daemons), besides its client
// and node connections: at most filters::ConnectionHost::kMaxConnections, each with
// an incarnation of its own so that a completion for an earlier connection in the
// same place is dropped. Driven on the session's ring: connect with a linked timeout,
// one send in flight (short sends resubmit the rest), multishot receive into the
// buffer ring, close = cancel, then close the fd after the last completion.
//
// Tags: the aux byte of a client operation is 0, of a node operation odd; these
// connections use the even values from 8 up: bits 1-2 the place, bits 3-7 the
// incarnation (1..31).
#include <liburing.h>

#include <array>
#include <cstdint>
#include <string>

#include "filters/connection.h"
#include "gateway/io/listener.h"

namespace mailgate::session {

class Reactor;

class AuxConnections final : public filters::ConnectionHost {
 public:
  AuxConnections(Reactor& reactor, uint32_t slot, uint32_t gen) : reactor_(reactor), slot_(slot), gen_(gen) {}
  ~AuxConnections() override;
  AuxConnections(const AuxConnections&) = delete;
  AuxConnections& operator=(const AuxConnections&) = delete;

  static bool owns(uint8_t aux) { return aux != 0 && (aux & 1) == 0; }

  // --- filters::ConnectionHost ---
  filters::ConnectionId open(std::string_view address, std::chrono::milliseconds timeout,
                             filters::ConnectionHandler* handler, std::string* error) override;
  bool write(filters::ConnectionId id, std::string_view bytes) override;
  size_t queued(filters::ConnectionId id) const override;
  void close(filters::ConnectionId id) override;
  std::function<void(std::function<void()>)> poster() override;

  // Completions, from the session.
  void onRecv(uint8_t aux, int res, uint32_t flags, const char* data);
  void onSend(uint8_t aux, int res);
  void onConnect(uint8_t aux, int res);
  void onOther(uint8_t aux);

  // The session closes: everything is cancelled, no handler is called again.
  void closeAll();
  // Nothing in flight: the fds may be closed and the memory freed.
  bool idle() const;
  // Closes the fds that are left (the session is being freed).
  void closeFds();
  // Connections open or still closing.
  unsigned inUse() const;

 private:
  enum class State : uint8_t { kFree, kConnecting, kOpen, kClosing };
  struct Conn {
    State state = State::kFree;
    int fd = -1;
    uint8_t incarnation = 0;
    unsigned ops = 0;  // operations in flight on fd
    bool recv_armed = false;
    bool send_inflight = false;
    bool send_failed = false;  // output dropped; the receive side reports the end
    std::string send_error;
    filters::ConnectionId id = 0;
    filters::ConnectionHandler* handler = nullptr;
    std::string out_pending;
    std::string out_inflight;
    size_t inflight_off = 0;
    io::SockAddr addr;
    __kernel_timespec connect_ts{};
  };

  uint8_t auxOf(const Conn& c, size_t index) const {
    return static_cast<uint8_t>((c.incarnation << 3) | (index << 1));
  }
  // The connection a completion is for, or null (stale: counted).
  Conn* byAux(uint8_t aux, size_t* index);
  Conn* byId(filters::ConnectionId id);
  const Conn* byId(filters::ConnectionId id) const;
  void armRecv(Conn& c, size_t index);
  void submitSend(Conn& c, size_t index);
  // Starts closing (cancels what is in flight); frees the place once nothing is.
  void beginClose(Conn& c, size_t index);
  void maybeFree(Conn& c);
  // The connection failed or the peer closed: close it and tell its handler.
  void end(Conn& c, size_t index, filters::ConnectionEnd how, const std::string& detail);

  Reactor& reactor_;
  uint32_t slot_;
  uint32_t gen_;
  std::array<Conn, kMaxConnections> conns_;
  uint32_t serial_ = 0;
  bool closed_all_ = false;
};

}  // namespace mailgate::session
