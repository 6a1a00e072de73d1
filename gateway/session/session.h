#pragma once
// The part every front-end session shares: the client and backend connections
// (socket + optional TLS + bounded send queue), receive/send on the reactor's ring,
// backend connect with a linked timeout, the relay with backpressure, closing by
// cancellation, and the summary log line. Protocol logic lives in subclasses.
#include <liburing.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "gateway/codec/proxy_header.h"
#include "gateway/core/log.h"
#include "gateway/io/listener.h"
#include "gateway/io/tag.h"
#include "gateway/session/aux_connections.h"
#include "gateway/session/backend_stats.h"
#include "gateway/session/filter_chain.h"
#include "gateway/session/runtime.h"
#include "gateway/session/verdict_render.h"
#include "gateway/tls/tls_stream.h"

namespace mailgate::session {

class Reactor;

enum class Side : uint8_t { kClient = 0, kBackend = 1 };

// Why a backend attempt failed; the class alone decides retry and the client's reply.
// kConnect: the connection could not be made; kSend: it was made, and sending on it failed.
enum class BackendFailure { kConnect, kSend, kTimeout, kProtocol, kTls, kTempRefusal, kAuthRejected, kInternal };
const char* failureName(BackendFailure f);

// One limiter for every protocol's failed-login log lines: a password guesser can
// produce them at will.
log::RateLimit& authLogLimit();

// A storage node a session may use, resolved on the worker pool.
struct Candidate {
  const conf::BackendConfig* backend = nullptr;
  io::SockAddr addr;
  std::string error;  // resolution failed
  bool up = true;
};

// The nodes of a route that take new sessions and offer a port (port(b) == 0 skips
// b), healthy first, primary before secondary among equals. Blocking (may resolve
// a host name): worker pool only.
std::vector<Candidate> routeCandidates(const routing::Route& route,
                                       const std::function<uint16_t(const conf::BackendConfig&)>& port);

struct Endpoint {
  int fd = -1;
  uint8_t incarnation = 0;  // distinguishes successive backend connections
  unsigned ops = 0;         // operations in flight on fd
  bool recv_armed = false;
  bool paused = false;  // backpressure: peer's queue is full
  bool eof = false;
  bool closing = false;
  bool send_inflight = false;
  std::unique_ptr<tls::TlsStream> tls;
  std::string out_pending;
  std::string out_inflight;
  size_t inflight_off = 0;
  uint64_t bytes_in = 0;   // bytes received from the socket
  uint64_t bytes_out = 0;  // bytes sent to the socket
  io::SockAddr addr;       // backend address (connect needs it stable)
  size_t queued() const { return out_pending.size() + out_inflight.size() - inflight_off; }
};

class Session : public ChainHost {
 public:
  static constexpr size_t kHighWater = 256 * 1024;  // pause the other side above this
  static constexpr size_t kLowWater = 64 * 1024;    // resume below this
  static constexpr uint64_t kTrimAfterMs = 2000;    // quiet time before buffers are released

  Session(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
          std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener);
  ~Session() override;

  // From the reactor, once: on a proxy_protocol listener the PROXY header is read
  // first (the client's addresses are taken from it), then start(); else start().
  void open();

  // Completions, from the reactor.
  void onRecv(uint8_t aux, int res, uint32_t flags, const char* data);
  void onSend(uint8_t aux, int res);
  void onConnect(uint8_t aux, int res);
  void onOtherCompletion(uint8_t aux);  // link timeout, cancel
  void onTick(uint64_t now_ms);

  bool closing() const { return closing_; }
  bool reapable() const;
  uint32_t slot() const { return slot_; }
  uint32_t gen() const { return gen_; }
  void forceClose(const char* outcome) { close(outcome); }
  // SIGTERM (Reactor::requestStop): the session says the protocol's goodbye and
  // closes as soon as it is idle (between commands; a relayed session when the node
  // has answered the client's last bytes), and finishes what it is doing otherwise
  // (a message being received, a login, a delivery) within server.shutdown_grace.
  void requestShutdown();
  // The grace is over: the goodbye (where the protocol can still say it), then close.
  void shutdownExpired();
  void finish();  // closes fds and logs the summary; called by the reactor before delete

  // --- ChainHost: the session's filters ---
  uint64_t chainNow() const override { return now(); }
  void chainHold() override { pauseClient(true); }
  void chainTimer(uint64_t at_ms) override { chain_timer_at_ = at_ms; }
  std::shared_ptr<const filters::Resumer::Post> chainPoster() override;
  void chainDone(filters::Stage stage, filters::Verdict verdict) final;

 protected:
  // --- hooks for the protocol ---
  virtual void start() = 0;  // greeting, or implicit TLS first
  virtual void onClientData(std::string_view plain) = 0;   // before the relay phase
  virtual void onBackendData(std::string_view plain) = 0;  // before the relay phase
  virtual void onClientTlsReady() = 0;
  virtual void onBackendConnected() = 0;
  virtual void onBackendTlsReady() = 0;
  virtual void onBackendFailed(BackendFailure why, const std::string& detail) = 0;
  virtual void onTimer() = 0;  // timer_at_ reached
  virtual void onClientClosed() { close("client_closed"); }
  // The relay phase: bytes from one side for the other (a protocol may watch them).
  virtual void onRelayData(Side side, std::string_view plain) {
    if (side == Side::kClient)
      writeBackend(plain);
    else
      writeClient(plain);
  }
  // Before the relay phase: the backend's send queue fell below kBackendLowWater.
  virtual void onBackendDrained() {}
  static constexpr size_t kBackendLowWater = 256 * 1024;

  // Shutdown: the protocol's goodbye line (CRLF included), and whether the session is
  // idle enough now to say it and close (before the relay; the base class decides
  // for the relay phase).
  virtual std::string goodbyeLine() const = 0;
  virtual bool idleForGoodbye() const { return false; }
  bool shuttingDown() const { return shutting_down_; }
  // Says the goodbye (if the client connection can carry it) and closes after it.
  void sayGoodbye();

  // The session's own filters (directory lookups and the like), after the configured ones.
  virtual void addBuiltinFilters(FilterChain& /*chain*/) {}
  // A stage other than connect is over (continue, or a terminal verdict to render).
  virtual void onStageDone(filters::Stage /*stage*/, filters::Verdict /*verdict*/) {}
  // The connect stage refused the session: the protocol's line, then close.
  virtual Rendered renderRefusal(const filters::Verdict& v, filters::Stage stage) const = 0;

  // --- services for the protocol ---
  // Runs the session's filters at a stage; onStageDone() follows (perhaps at once).
  void runStage(filters::Stage stage) { chain_.run(stage, facts_); }
  // Header fields the data stage's filters added ("Name: value"), taken once.
  std::vector<std::string> takeAddedHeaders() { return chain_.takeHeaders(); }
  // The data stage's replacement for the spooled message (null: none), taken once.
  std::shared_ptr<const filters::MessageBody> takeReplacement() { return chain_.takeReplacement(); }
  bool stageWanted(filters::Stage stage) const { return chain_.wants(stage); }
  // Reports an event to the filters (policy counters); a terminal answer is logged
  // here and is the protocol's to render (then close, or refuse the login).
  filters::Verdict notifyEvent(filters::EventKind kind, uint64_t credential = 0);
  // How long a directory lookup may take (its queue wait included): 3 × the driver's
  // timeout + 2 s, at least 5 s. At the deadline the client gets a temporary failure.
  std::chrono::milliseconds directoryDeadline() const;
  // Logs a terminal verdict (rate-limited) with its reference.
  void logRefusal(filters::Stage stage, const filters::Verdict& v) const;
  // The facts for a directory lookup: a copy (the lookup runs on an executor) with the
  // TLS state as of now.
  filters::SessionFacts directoryFacts();
  void writeClient(std::string_view plain);
  void writeBackend(std::string_view plain);
  // Server-side TLS on the client connection (implicit TLS at start, or after the
  // STARTTLS reply was queued). Returns false if TLS is not configured.
  bool startClientTls();
  bool clientTlsActive() const { return client_.tls && client_.tls->handshakeDone(); }
  bool clientTlsStarted() const { return client_.tls != nullptr; }
  // Negotiated on the client connection (empty without TLS).
  const std::string& clientTlsVersion() const { return tls_version_; }
  const std::string& clientTlsCipher() const { return tls_cipher_; }
  // Connects to addr; onBackendConnected() or onBackendFailed() follows.
  void connectBackend(const io::SockAddr& addr, std::chrono::milliseconds timeout);
  bool startBackendTls(const std::string& backend_name);
  // Cancels and forgets the backend connection (its fd closes once its operations end).
  void dropBackend();
  // From now on bytes flow both ways unparsed.
  void startRelay(std::string_view to_client, std::string_view to_backend);
  bool relaying() const { return relaying_; }
  void close(const char* outcome);
  // Close once everything queued for the client is sent.
  void closeAfterFlush(const char* outcome);
  void setTimer(uint64_t at_ms) { timer_at_ = at_ms; }
  void clearTimer() { timer_at_ = 0; }
  void pauseClient(bool pause);
  uint64_t now() const;
  std::string peerText() const { return client_ip_ + ":" + std::to_string(client_port_); }  // for logs

  Reactor& reactor_;
  std::shared_ptr<Runtime> rt_;
  filters::SessionFacts facts_;
  const conf::ListenerConfig& listener_;
  std::string id_;
  std::string client_ip_;
  uint16_t client_port_ = 0;
  std::string local_ip_;
  uint16_t local_port_ = 0;
  std::string user_;
  std::string backend_name_;
  BackendStats* relay_stats_ = nullptr;  // the node relayed to: its `active` counts this session
  const char* outcome_ = nullptr;
  uint64_t last_activity_ = 0;

 private:
  Endpoint* endpointFor(uint8_t aux);
  // Is the current backend the one with this incarnation (not dropped meanwhile)?
  bool isBackend(uint8_t incarnation) const { return backend_ && backend_->incarnation == incarnation; }
  uint8_t auxOf(Side side, const Endpoint& e) const;
  void armRecv(Side side, Endpoint& e);
  void flush(Side side, Endpoint& e);
  void submitSend(Side side, Endpoint& e);
  void deliver(Side side, Endpoint& e, std::string_view cipher_or_plain);
  void handlePlain(Side side, std::string_view plain);
  void cancelEndpoint(Side side, Endpoint& e);
  void endpointEof(Side side, Endpoint& e, const std::string& why);
  void updateBackpressure();
  void maybeRetireEndpoints();
  void trimBuffers();
  // Feeds the PROXY header parser; true when the header is complete (the session has
  // started and *bytes holds what followed it).
  bool takeProxyHeader(std::string_view* bytes);

  // Addresses (after PROXY) into the facts, the filters made; then the connect stage.
  void beginConnect();

  uint32_t slot_;
  uint32_t gen_;
  FilterChain chain_{*this};
  uint64_t chain_timer_at_ = 0;
  Endpoint client_;
  std::unique_ptr<AuxConnections> aux_;  // the filters' connections (made with the filters)
  std::unique_ptr<Endpoint> backend_;
  std::vector<std::unique_ptr<Endpoint>> dead_backends_;
  uint8_t next_incarnation_ = 0;
  __kernel_timespec connect_ts_{};
  bool relaying_ = false;
  bool client_hold_ = false;  // the protocol holds client input (waiting for auth)
  bool closing_ = false;
  bool close_after_flush_ = false;
  bool retired_ = false;
  bool trimmed_ = false;  // close() ran: cancelled and handed to the reactor for freeing
  bool finished_ = false;
  uint64_t timer_at_ = 0;
  uint64_t started_ms_ = 0;
  std::string tls_version_, tls_cipher_;
  std::unique_ptr<codec::ProxyHeaderParser> proxy_;  // until the PROXY header is in
  uint64_t proxy_deadline_ = 0;
  bool shutting_down_ = false;
  // The relay: the last bytes went to the client (from the node) and ended a line.
  bool relay_node_spoke_last_ = true;
  bool relay_at_line_end_ = true;
  bool relayQuiet() const;
};

}  // namespace mailgate::session
