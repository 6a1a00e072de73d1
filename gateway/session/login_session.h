#pragma once
// What IMAP and POP3 share: the start (greeting, or implicit TLS first), the
// pre-login input loop (the protocol's parser fed, its commands and SASL lines
// dispatched, input held while a login runs, bytes pipelined after STARTTLS/STLS
// discarded), and after the client has given credentials the directory lookup on
// the worker pool, the failure delay, the choice of storage node (primary, then
// secondary; healthy ones first) and failover between attempts. The protocol
// subclass has the wording, handles the commands and runs the backend handshake.
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "auth/directory.h"
#include "gateway/core/log.h"
#include "gateway/session/sasl_exchange.h"
#include "gateway/session/session.h"

namespace mailgate::session {

class ExecutorStep;

// What the pre-login loop needs to know of a protocol besides its hooks.
struct PreLoginRules {
  size_t max_held;                    // client bytes kept while a login runs
  std::string_view held_refusal;      // the reply (then close) when more arrive
  const char* tls_discard_log;        // the log line for bytes pipelined after STARTTLS/STLS
  log::RateLimit* tls_discard_limit;  // and its rate limit (a client can trigger it at will)
  std::string_view line_timeout_reply;  // a started line not ended within limits.line_timeout (then close)
};

class LoginSession : public Session {
 public:
  using Session::Session;

 protected:
  // Starts the login: directory, then backend. The client's further input is held.
  void beginLogin(std::string user, std::string password);
  // The backend handshake failed for this class of reason: try the next node or give up.
  void backendAttemptFailed(BackendFailure why, const std::string& detail);
  // The backend refused the credentials: report an authentication failure.
  void backendLoginRejected(const std::string& detail);
  // The backend accepted: `to_client` (the login's reply) and the input held meanwhile
  // go their ways, and bytes now flow.
  void loginSucceeded(std::string_view to_client);
  // Credentials for the storage node: the client's, unless the directory gave others.
  const std::string& password() const { return backend_password_ ? *backend_password_ : password_; }
  const std::string& loginUser() const { return backend_user_ ? *backend_user_ : user_; }
  const conf::BackendConfig* currentBackend() const { return current_; }
  // The node's SASL PLAIN response (base64): the user's credentials (replayed, or the
  // ones the directory gave), or with login: master the master user's, on the user's
  // behalf (authorization identity = the user, RFC 4616).
  std::string backendPlainResponse() const;
  // login: master applies to this attempt (and the directory gave no credentials).
  bool masterLogin() const;
  // Failed logins of either kind: refused credentials and temporary failures (directory
  // or every node unavailable). At listener.max_auth_attempts the session is closed.
  unsigned authFailures() const { return auth_failures_; }
  unsigned attempt() const { return attempt_; }  // changes with every backend attempt

  // One SASL response from the client (an initial response or a continuation line):
  // the next challenge, the login, or the protocol's refusal.
  void saslRespond(std::string_view line);
  // "+ <base64>" to the client; its next line is a SASL response.
  void sendSaslChallenge(std::string_view challenge);
  bool plaintextAllowed() const { return clientTlsActive() || listener_.allow_plaintext_auth; }
  // The positive STARTTLS/STLS reply is queued: TLS starts (or the session closes), and
  // the bytes that came with the command are discarded.
  void startClientTlsAfterReply();

  // --- protocol hooks: the pre-login loop ---
  enum class ClientInput {
    kNeedMore,  // the input is consumed, no complete command yet
    kAnswered,  // the protocol answered a step itself (IMAP's literal continuation); feed on
    kCommand,   // handleCommand() acts on it
    kSaslLine,  // one SASL response line
    kError,     // recoverable: replyBadInput(), the parser is in sync again
    kFatal,     // replyFatalInput(), then close
  };
  struct Parsed {
    ClientInput what;
    size_t consumed;
    std::string_view sasl_line;  // kSaslLine
  };
  virtual const PreLoginRules& preLoginRules() const = 0;
  virtual void sendGreeting() = 0;
  virtual Parsed feedParser(std::string_view data) = 0;
  virtual void handleCommand() = 0;
  virtual void replyBadInput() = 0;    // count it; may close at the limit
  virtual void replyFatalInput() = 0;  // the session then closes
  virtual void expectSaslLine() = 0;   // the parser's next line is a SASL response
  // After STARTTLS/STLS: drops every buffered byte; true when there were some.
  virtual bool resetParser() = 0;
  // The parser holds part of a command line (bytes without their line end yet).
  virtual bool lineStarted() const = 0;

  // --- protocol hooks: the login ---
  // The exchange ended without credentials (kCancelled, kMalformed or kRejected).
  virtual void replySaslRefused(SaslExchange::Step why) = 0;
  virtual uint16_t backendPort(const conf::BackendConfig& b) const = 0;
  virtual void replyAuthFailed() = 0;                      // after the failure delay
  virtual void replyTempFail(const std::string& why) = 0;  // directory or every node unavailable
  virtual void beginBackendHandshake() = 0;                // TCP (and implicit TLS) is up
  virtual void onPreauthTimeout() = 0;

  // The node's replies during the handshake, one line at a time (CRLF stripped).
  virtual void handleBackendLine(std::string_view line) = 0;
  void onBackendData(std::string_view data) final;
  void resetBackendLines() { bline_.clear(); }

  void start() final;
  void onClientData(std::string_view data) final;
  void onClientTlsReady() final;
  void onBackendConnected() final;
  void onBackendTlsReady() override;
  void onBackendFailed(BackendFailure why, const std::string& detail) final;
  void onTimer() final;
  void armPreauthTimer();
  void addBuiltinFilters(FilterChain& chain) override;
  void onStageDone(filters::Stage stage, filters::Verdict verdict) override;
  // Shutdown: idle before the login (no login running, no TLS handshake, no command
  // line begun); a login in progress finishes first.
  bool idleForGoodbye() const final { return phase_ == LoginPhase::kIdle && !tls_pending_ && !lineStarted(); }

  SaslExchange sasl_;

 private:
  enum class LoginPhase { kIdle, kDirectory, kDelay, kBackend, kRelay };

  // Keeps client input that arrives while a login is in progress (every append goes
  // through here). When the held bytes would exceed the protocol's bound, nothing
  // more is kept: the client gets the refusal and the session closes.
  void holdInput(std::string_view data);
  void resumeClientInput();  // back to pre-auth: parse what was held
  void onDirectoryAnswer(auth::AuthResult result, std::vector<Candidate> candidates);
  void tryNextCandidate();
  // A login refused by the policy (before the directory, or the per-user session
  // limit after it): the protocol's reply, then back to pre-login or closed.
  void refuseLogin(const filters::Verdict& v);
  // Back to the pre-login phase: the timer, and the client's held input.
  void backToPreLogin();
  void fail(bool auth_failure, const std::string& why);
  // Pre-login: the timer is the earlier of the preauth deadline and the started line's.
  void armIdleTimer();
  void lineTimedOut();

  LoginPhase phase_ = LoginPhase::kIdle;
  bool tls_pending_ = false;  // client TLS started (implicit, or STARTTLS answered), handshake running
  std::string held_;          // client bytes received while the login is in progress, at most the bound
  // What the auth stage's directory step answered for the login in progress.
  struct DirectoryLookup {
    auth::AuthResult result;
    std::vector<Candidate> candidates;
    bool answered = false;
  };
  DirectoryLookup lookup_;
  ExecutorStep* directory_step_ = nullptr;  // the auth stage's directory lookup (owned by the chain)
  std::string password_;
  std::string bline_;  // a partial line from the node
  std::optional<std::string> backend_user_;
  std::optional<std::string> backend_password_;
  std::chrono::milliseconds extra_wait_{0};
  std::vector<Candidate> candidates_;
  size_t next_candidate_ = 0;
  const conf::BackendConfig* current_ = nullptr;
  unsigned auth_failures_ = 0;
  unsigned attempt_ = 0;
  uint64_t preauth_at_ = 0;    // pre-login inactivity deadline
  uint64_t line_started_ = 0;  // when the first byte of the unfinished command line came; 0 = none
};

}  // namespace mailgate::session
