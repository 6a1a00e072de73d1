#include "gateway/session/pop3_session.h"

#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/session/reactor.h"

namespace mailgate::session {

namespace {
log::RateLimit g_proto_log(20);
log::RateLimit g_stls_log(20);  // a client can trigger this at will
const PreLoginRules kPreLogin{16 * 1024, "-ERR Too much data before login completed.\r\n",
                              "pipelined data after STLS discarded", &g_stls_log,
                              "-ERR [SYS/TEMP] command line timeout\r\n"};

codec::Pop3Limits limitsFor(const conf::ListenerConfig& l) {
  codec::Pop3Limits lim;
  lim.max_line = l.max_line ? l.max_line : 512;
  return lim;
}

}  // namespace

Pop3Session::Pop3Session(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
                         std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener)
    : LoginSession(reactor, slot, gen, fd, peer, std::move(rt), listener),
      parser_(std::make_unique<codec::Pop3CommandParser>(limitsFor(listener))) {}

const PreLoginRules& Pop3Session::preLoginRules() const { return kPreLogin; }

void Pop3Session::badCommand(std::string_view text) {
  bad_commands_++;
  if (g_proto_log.allow())
    log::info("pop3 protocol error", {{"session", id_}, {"client", client_ip_}, {"error", text}});
  if (const filters::Verdict pv = notifyEvent(filters::EventKind::kError); filters::isTerminal(pv.action)) {
    writeClient(renderPop3(pv, filters::Stage::kClose).line + "\r\n");
    closeAfterFlush("refused_by_policy");
    return;
  }
  if (bad_commands_ >= listener_.max_bad_commands) {
    writeClient("-ERR Too many invalid commands.\r\n");
    closeAfterFlush("too_many_errors");
    return;
  }
  writeClient("-ERR " + std::string(text) + "\r\n");
}

LoginSession::Parsed Pop3Session::feedParser(std::string_view data) {
  const codec::Pop3Feed r = parser_->feed(data);
  switch (r.status) {
    case codec::Pop3Status::kNeedMore:
      return {ClientInput::kNeedMore, r.consumed, {}};
    case codec::Pop3Status::kSaslLine:
      return {ClientInput::kSaslLine, r.consumed, parser_->saslLine()};
    case codec::Pop3Status::kCommand:
      return {ClientInput::kCommand, r.consumed, {}};
    case codec::Pop3Status::kError:
      return {ClientInput::kError, r.consumed, {}};
    case codec::Pop3Status::kFatal:
      return {ClientInput::kFatal, r.consumed, {}};
  }
  return {ClientInput::kFatal, r.consumed, {}};
}

bool Pop3Session::resetParser() {
  const bool pending = parser_->hasPending();
  parser_->reset();
  return pending;
}

void Pop3Session::handleCommand() {
  const codec::Pop3Command& c = parser_->command();
  switch (c.verb) {
    case codec::Pop3Verb::kCapa: {
      std::string caps = "+OK\r\nCAPA\r\n";
      if (plaintextAllowed()) caps += "USER\r\nSASL PLAIN LOGIN\r\n";
      if (listener_.tls == conf::TlsMode::kStarttls && !clientTlsStarted()) caps += "STLS\r\n";
      caps += "RESP-CODES\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION mailgate\r\n.\r\n";
      writeClient(caps);
      return;
    }
    case codec::Pop3Verb::kStls:
      if (listener_.tls != conf::TlsMode::kStarttls || clientTlsStarted()) {
        writeClient(clientTlsStarted() ? "-ERR TLS is already active.\r\n"
                                       : "-ERR STLS is not available.\r\n");
        return;
      }
      writeClient("+OK Begin TLS negotiation now.\r\n");
      startClientTlsAfterReply();
      return;
    case codec::Pop3Verb::kUser:
      if (!plaintextAllowed()) {
        writeClient("-ERR [AUTH] Plaintext authentication disallowed without TLS.\r\n");
        return;
      }
      if (c.argc != 1) {
        badCommand("Invalid arguments.");
        return;
      }
      user_arg_.assign(c.args[0]);
      writeClient("+OK\r\n");
      return;
    case codec::Pop3Verb::kPass:
      if (!plaintextAllowed()) {
        writeClient("-ERR [AUTH] Plaintext authentication disallowed without TLS.\r\n");
        return;
      }
      if (user_arg_.empty()) {
        writeClient("-ERR No username given.\r\n");
        return;
      }
      if (c.argc != 1) {
        badCommand("Invalid arguments.");
        return;
      }
      beginLogin(std::move(user_arg_), std::string(c.args[0]));
      user_arg_.clear();
      return;
    case codec::Pop3Verb::kAuth:
      if (c.argc == 0) {
        writeClient("+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n");
        return;
      }
      if (!plaintextAllowed()) {
        writeClient("-ERR [AUTH] Plaintext authentication disallowed without TLS.\r\n");
        return;
      }
      if (!sasl_.begin(c.args[0])) {
        writeClient("-ERR Unsupported authentication mechanism.\r\n");
        return;
      }
      if (c.argc >= 2) {
        saslRespond(c.args[1]);
        return;
      }
      sendSaslChallenge(sasl_.initialChallenge());
      return;
    case codec::Pop3Verb::kQuit:
      writeClient("+OK Logging out.\r\n");
      closeAfterFlush("logout");
      return;
    case codec::Pop3Verb::kNoop:
    case codec::Pop3Verb::kOther:
      badCommand("Command not allowed before authentication.");
      return;
    case codec::Pop3Verb::kUnknown:
      badCommand("Unknown command.");
      return;
  }
}

void Pop3Session::replySaslRefused(SaslExchange::Step why) {
  if (why == SaslExchange::Step::kCancelled)
    writeClient("-ERR Authentication aborted by client.\r\n");
  else if (why == SaslExchange::Step::kMalformed)
    writeClient("-ERR Invalid base64 data.\r\n");
  else
    writeClient("-ERR [AUTH] Authentication failed.\r\n");
}

void Pop3Session::replyAuthFailed() {
  if (authFailures() >= listener_.max_auth_attempts) {
    writeClient("-ERR [AUTH] Authentication failed.\r\n");
    closeAfterFlush("auth_failed");
    return;
  }
  writeClient("-ERR [AUTH] Authentication failed.\r\n");
}

void Pop3Session::replyTempFail(const std::string& /*why*/) {
  if (authFailures() >= listener_.max_auth_attempts) {
    writeClient("-ERR [SYS/TEMP] Backend unavailable; too many authentication failures.\r\n");
    closeAfterFlush("auth_failed");
    return;
  }
  writeClient("-ERR [SYS/TEMP] Backend unavailable, try again later.\r\n");
}

void Pop3Session::onPreauthTimeout() {
  writeClient("-ERR Disconnected for inactivity.\r\n");
  closeAfterFlush("timeout");
}

// ---- backend side ----

void Pop3Session::beginBackendHandshake() {
  bstep_ = BackendStep::kGreeting;
  resetBackendLines();
  b_xclient_ = b_greeting_xclient_ = false;
  b_stls_done_ = false;
}

void Pop3Session::onBackendTlsReady() {
  const conf::BackendConfig* b = currentBackend();
  if (!b) return;
  if (b->tls == conf::TlsMode::kImplicit) {
    beginBackendHandshake();
    return;
  }
  b_stls_done_ = true;
  bstep_ = BackendStep::kCapa;
  b_xclient_ = b_greeting_xclient_;
  writeBackend("CAPA\r\n");
}

void Pop3Session::afterCapa() {
  const conf::BackendConfig* b = currentBackend();
  if (b && b->tls == conf::TlsMode::kStarttls && !b_stls_done_) {
    bstep_ = BackendStep::kStls;
    writeBackend("STLS\r\n");
    return;
  }
  if (b_xclient_) {
    bstep_ = BackendStep::kXclient;
    writeBackend("XCLIENT ADDR=" + client_ip_ + " PORT=" + std::to_string(client_port_) + " SESSION=" + id_ +
                 "\r\n");
    return;
  }
  sendBackendAuth();
}

void Pop3Session::sendBackendAuth() {
  bstep_ = BackendStep::kAuth;
  writeBackend("AUTH PLAIN " + backendPlainResponse() + "\r\n");
}

void Pop3Session::handleBackendLine(std::string_view line) {
  switch (bstep_) {
    case BackendStep::kGreeting:
      if (!ascii::istartsWith(line, "+OK")) {
        backendAttemptFailed(BackendFailure::kTempRefusal, std::string(line));
        return;
      }
      // Dovecot offers XCLIENT to trusted networks in its greeting ("+OK [XCLIENT] ..."),
      // not in CAPA; other servers may list it in CAPA. With STLS the offer was made
      // before TLS and is kept: it only tells whether to send our client's address,
      // and the node itself decides whether to believe it.
      b_greeting_xclient_ = line.find("[XCLIENT]") != std::string_view::npos;
      b_xclient_ = b_greeting_xclient_;
      bstep_ = BackendStep::kCapa;
      writeBackend("CAPA\r\n");
      return;
    case BackendStep::kCapa:
      if (line == ".") {
        afterCapa();
        return;
      }
      if (ascii::istartsWith(line, "-ERR")) {
        afterCapa();
        return;
      }
      if (ascii::istartsWith(line, "XCLIENT")) b_xclient_ = true;
      return;
    case BackendStep::kStls:
      if (!ascii::istartsWith(line, "+OK")) {
        backendAttemptFailed(BackendFailure::kTls, "STLS refused: " + std::string(line));
        return;
      }
      if (!startBackendTls(currentBackend()->name))
        backendAttemptFailed(BackendFailure::kTls, "cannot start TLS");
      return;
    case BackendStep::kXclient:
      // Dovecot answers XCLIENT with +OK (and nothing else); a refusal is not fatal.
      sendBackendAuth();
      return;
    case BackendStep::kAuth:
    case BackendStep::kAuthResponse:
      if (line.rfind("+ ", 0) == 0 || line == "+") {
        // No initial-response support: answer the empty challenge.
        bstep_ = BackendStep::kAuthResponse;
        writeBackend(backendPlainResponse() + "\r\n");
        return;
      }
      if (ascii::istartsWith(line, "+OK")) {
        std::string reply(line);
        reply += "\r\n";
        parser_.reset();
        loginSucceeded(reply);
        return;
      }
      if (ascii::istartsWith(line, "-ERR [SYS/TEMP]") || ascii::istartsWith(line, "-ERR [IN-USE]")) {
        backendAttemptFailed(BackendFailure::kTempRefusal, std::string(line));
        return;
      }
      backendLoginRejected(std::string(line));
      return;
  }
}

}  // namespace mailgate::session
