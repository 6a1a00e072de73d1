#pragma once
// What IMAP and POP3 share after the client has given credentials: the directory
// lookup on the worker pool, the failure delay, the choice of storage node
// (primary, then secondary; healthy ones first) and failover between attempts.
// The protocol subclass speaks to the client and runs the backend handshake.
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "auth/directory.h"
#include "gateway/session/sasl_exchange.h"
#include "gateway/session/session.h"

namespace mailgate::session {

class ExecutorStep;

class LoginSession : public Session {
 public:
  using Session::Session;

  // A login's directory lookup: the request, and the answer the auth stage's
  // directory step fills in.
  struct DirectoryLookup {
    std::string user, password;
    auth::AuthResult result;
    std::vector<Candidate> candidates;
    bool answered = false;
  };

 protected:
  enum class LoginPhase { kIdle, kDirectory, kDelay, kBackend, kRelay };

  // Starts the login: directory, then backend. The client's further input is held.
  void beginLogin(std::string user, std::string password);
  // The backend handshake failed for this class of reason: try the next node or give up.
  void backendAttemptFailed(BackendFailure why, const std::string& detail);
  // The backend refused the credentials: report an authentication failure.
  void backendLoginRejected(const std::string& detail);
  // The backend accepted: bytes now flow.
  void loginSucceeded(std::string_view to_client, std::string_view to_backend);
  LoginPhase loginPhase() const { return phase_; }
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

  // --- protocol hooks ---
  // "+ <base64>" to the client; its next line is a SASL response.
  virtual void sendSaslChallenge(std::string_view challenge) = 0;
  // The exchange ended without credentials (kCancelled, kMalformed or kRejected).
  virtual void replySaslRefused(SaslExchange::Step why) = 0;
  virtual uint16_t backendPort(const conf::BackendConfig& b) const = 0;
  virtual void replyAuthFailed() = 0;                      // after the failure delay
  virtual void replyTempFail(const std::string& why) = 0;  // directory or every node unavailable
  virtual void beginBackendHandshake() = 0;                // TCP (and implicit TLS) is up
  virtual void onPreauthTimeout() = 0;
  virtual void resumeClientInput() = 0;  // back to pre-auth: parse what was held

  // The node's replies during the handshake, one line at a time (CRLF stripped).
  virtual void handleBackendLine(std::string_view line) = 0;
  void onBackendData(std::string_view data) final;
  void resetBackendLines() { bline_.clear(); }

  void onBackendConnected() final;
  void onBackendTlsReady() override;
  void onBackendFailed(BackendFailure why, const std::string& detail) final;
  void onTimer() final;
  void armPreauthTimer();
  void addBuiltinFilters(FilterChain& chain) override;
  void onStageDone(filters::Stage stage, filters::Verdict verdict) override;

  // Keeps client input that arrives while a login is in progress (every append goes
  // through here). When the held bytes would exceed `max`, nothing more is kept: the
  // client gets `refusal`, the session closes, and the answer is false.
  bool holdInput(std::string_view data, size_t max, std::string_view refusal);

  SaslExchange sasl_;
  std::string held_;  // client bytes received while the login is in progress, at most the bound

 private:
  void onDirectoryAnswer(auth::AuthResult result, std::vector<Candidate> candidates);
  void tryNextCandidate();
  void fail(bool auth_failure, const std::string& why);

  LoginPhase phase_ = LoginPhase::kIdle;
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
};

}  // namespace mailgate::session
