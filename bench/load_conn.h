#pragma once
// One IMAP client connection of the load generator: a non-blocking socket, optional
// TLS (implicit or after STARTTLS, no certificate verification), and a response
// reader that frames IMAP responses (CRLF lines with {N} literals skipped without
// being buffered). The connection walks a fixed script chosen by the mode:
//   connect → [TLS] → greeting → [STARTTLS → TLS] → LOGIN → SELECT →
//   (FETCH 1:* BODY.PEEK[])* | IDLE … DONE → LOGOUT.
// It never blocks; the owner drives it from epoll readiness.
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace mailgate::bench {

using Clock = std::chrono::steady_clock;

enum class TlsMode { kNone, kImplicit, kStarttls };

// What the connection does once it is logged in and has selected the mailbox.
enum class Script { kLogout, kFetch, kIdle };

struct ConnParams {
  const sockaddr* addr = nullptr;
  socklen_t addr_len = 0;
  SSL_CTX* ssl_ctx = nullptr;  // required unless tls == kNone
  TlsMode tls = TlsMode::kNone;
  const char* sni = nullptr;   // server name sent in the ClientHello (may be null)
  std::string user;
  std::string password;
  std::string mailbox = "INBOX";
  Script script = Script::kLogout;
  unsigned fetch_repeat = 1;   // FETCH commands per session (kFetch)
};

enum class Phase {
  kIdleSlot,      // no socket
  kConnecting,
  kTlsHandshake,
  kGreeting,
  kStarttls,
  kLogin,
  kSelect,
  kFetch,
  kIdleWait,      // IDLE sent, waiting for the continuation
  kIdling,        // in IDLE, waiting for the owner to call release()
  kDone,          // DONE sent, waiting for the tagged OK
  kLogout,
  kFinished,      // session complete, socket closed
  kFailed,        // session failed, socket closed; error() says why
};

class Conn {
 public:
  Conn() = default;
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn();

  // Starts a new session. Returns false (phase kFailed) when the socket cannot be
  // created. The caller then registers fd() with epoll using wantEvents().
  bool start(const ConnParams* params);
  // Handles readiness; after it returns, the owner re-arms with wantEvents() when
  // phase() is not terminal (kFinished/kFailed).
  void onEvents(uint32_t events);
  // Ends IDLE (DONE) and logs out. Only in kIdling.
  void release();

  int fd() const { return fd_; }
  Phase phase() const { return phase_; }
  bool terminal() const { return phase_ == Phase::kFinished || phase_ == Phase::kFailed; }
  uint32_t wantEvents() const;
  const std::string& error() const { return error_; }
  Clock::time_point started() const { return started_; }
  Clock::time_point finished() const { return finished_; }
  uint64_t bytesIn() const { return bytes_in_; }
  // FETCH phase: payload bytes received and time spent (summed over repeats).
  uint64_t fetchBytes() const { return fetch_bytes_; }
  Clock::duration fetchTime() const { return fetch_time_; }

 private:
  void fail(std::string why);
  void finish();
  void closeSocket();
  void onConnected();
  void startTls();
  void continueHandshake();
  void afterHandshake();
  void send(const std::string& command);
  bool flush();                  // false on a fatal error (already failed)
  void readAvailable();
  void parseInput();
  void onResponse(const char* line, size_t len);  // first segment of a response
  void onTagged(bool ok, const char* line, size_t len);
  void sendLogin();
  void sendNext(Phase next, const char* command);

  const ConnParams* params_ = nullptr;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  Phase phase_ = Phase::kIdleSlot;
  bool tls_want_write_ = false;  // handshake (or write) waits for writability
  unsigned tag_ = 0;
  unsigned fetches_left_ = 0;
  std::string error_;
  std::string out_;
  size_t out_off_ = 0;
  // Input: a fixed buffer with [in_begin_, in_end_) unread.
  static constexpr size_t kInSize = 256 * 1024;
  char* in_ = nullptr;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  uint64_t literal_left_ = 0;  // bytes of a literal still to skip
  bool mid_response_ = false;  // the next line segment continues a response
  Clock::time_point started_{};
  Clock::time_point finished_{};
  Clock::time_point fetch_started_{};
  uint64_t bytes_in_ = 0;
  uint64_t fetch_bytes_ = 0;
  uint64_t fetch_mark_ = 0;
  Clock::duration fetch_time_{};
};

}  // namespace mailgate::bench
