#include "gateway/session/smtp_session.h"

#include <unistd.h>

#include <algorithm>
#include <ctime>

#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/session/reactor.h"

namespace mailgate::session {

namespace {
// Client bytes held while a lookup or a delivery runs (the client is paused, so
// only what was already in flight arrives).
constexpr size_t kMaxHeld = 1 << 20;
constexpr uint64_t kNodeReplyMs = 60000;   // one reply from the node (RFC 5321 §4.5.3.2 says 5 min)
constexpr uint64_t kNodeFinalMs = 600000;  // the reply after the end of data (§4.5.3.2.6: 10 min)
constexpr uint64_t kNodeQuitMs = 5000;
// A node connection kept after a delivery, for the client's next message (RFC 5321
// allows many transactions per connection; each one costs a handshake otherwise).
constexpr uint64_t kNodeIdleMs = 30000;
log::RateLimit g_proto_log(20);
log::RateLimit g_smuggle_log(20);
// Lines a client can produce at will, each with its own limiter.
log::RateLimit g_starttls_log(20);
log::RateLimit g_rcpt_limit_log(20);
log::RateLimit g_attempt_log(20);

codec::SmtpLimits limitsFor(const conf::ListenerConfig& l) {
  codec::SmtpLimits lim;
  lim.max_line = l.max_line ? l.max_line : 512;
  return lim;
}

const std::string& localHostname() {
  static const std::string name = [] {
    char buf[256] = {};
    if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return std::string("localhost");
    return std::string(buf);
  }();
  return name;
}

std::string rfc5322Date() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return std::string(buf, n);
}

// RFC 3461 xtext, as XCLIENT wants its values.
std::string xtext(std::string_view v) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : v) {
    if (c < 33 || c > 126 || c == '+' || c == '=') {
      out += '+';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string replyText(const codec::SmtpReply& r) {
  std::string s = std::to_string(r.code);
  if (!r.enhanced_text.empty()) {
    s += ' ';
    s += r.enhanced_text;
  }
  s += ' ';
  s += r.message();
  return s;
}

const char* dataErrorName(codec::SmtpDataError e) {
  switch (e) {
    case codec::SmtpDataError::kNone:
      return "none";
    case codec::SmtpDataError::kBareLf:
      return "bare_lf";
    case codec::SmtpDataError::kBareCr:
      return "bare_cr";
    case codec::SmtpDataError::kNul:
      return "nul";
    case codec::SmtpDataError::kLineTooLong:
      return "line_too_long";
    case codec::SmtpDataError::kTooBig:
      return "too_big";
  }
  return "?";
}
}  // namespace

SmtpSession::SmtpSession(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
                         std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener)
    : Session(reactor, slot, gen, fd, peer, std::move(rt), listener),
      parser_(std::make_unique<codec::SmtpCommandParser>(limitsFor(listener))),
      data_(codec::SmtpDataLimits{1000, listener.max_message_size, uint64_t{64} << 20}),
      bdat_(codec::BdatLimits{1000, listener.max_message_size}),
      hostname_(localHostname()),
      submission_(listener.protocol == conf::Protocol::kSubmission),
      spool_(std::make_shared<MessageSpool>(rt_->config->server.spool_memory, rt_->config->server.spool_dir)) {}

void SmtpSession::start() {
  armClientTimer();
  if (listener_.tls == conf::TlsMode::kImplicit) {
    if (!startClientTls()) {
      close("tls_unavailable");
      return;
    }
    phase_ = Phase::kTlsHandshake;  // the greeting follows the handshake
    pauseClient(false);
    return;
  }
  sendGreeting();
  pauseClient(false);
}

void SmtpSession::resumeClient() {
  if (closing()) return;
  pauseClient(false);
  armClientTimer();
  process();
}

void SmtpSession::sendGreeting() {
  if (listener_.greeting_delay.count() > 0 && greet_at_ == 0 && !greeted_) {
    greet_at_ = now() + static_cast<uint64_t>(listener_.greeting_delay.count());
    updateTimer();
    return;
  }
  greet_at_ = 0;
  greeted_ = true;
  reply("220 " + hostname_ + " ESMTP mailgate");
}

void SmtpSession::reply(std::string_view line) {
  std::string out(line);
  out += "\r\n";
  writeClient(out);
}

void SmtpSession::armClientTimer() {
  client_deadline_ = now() + static_cast<uint64_t>(listener_.preauth_timeout.count());
  updateTimer();
}

void SmtpSession::armNodeTimer(uint64_t ms) {
  node_deadline_ = now() + ms;
  updateTimer();
}

void SmtpSession::updateTimer() {
  uint64_t at = 0;
  if (client_deadline_ && !busy()) at = client_deadline_;
  if (greet_at_ && (at == 0 || greet_at_ < at)) at = greet_at_;
  if (auth_delay_until_ && (at == 0 || auth_delay_until_ < at)) at = auth_delay_until_;
  if (node_deadline_ && (at == 0 || node_deadline_ < at)) at = node_deadline_;
  if (at)
    setTimer(at);
  else
    clearTimer();
}

void SmtpSession::onTimer() {
  const uint64_t t = now();
  if (greet_at_ && t >= greet_at_) {
    sendGreeting();
    armClientTimer();
  }
  if (auth_delay_until_ && t >= auth_delay_until_) {
    auth_delay_until_ = 0;
    if (phase_ == Phase::kAuthDelay) {
      phase_ = Phase::kCommand;
      if (auth_failures_ >= listener_.max_auth_attempts) {
        log::info("smtp too many authentication failures",
                  {{"session", id_}, {"client", client_ip_}, {"failures", auth_failures_}});
        reply("421 4.7.0 " + hostname_ + " Error: too many authentication failures");
        closeAfterFlush("too_many_auth_failures");
        return;
      }
      reply("535 5.7.8 Error: authentication failed");
      resumeClient();
      if (closing()) return;
    }
  }
  if (node_deadline_ && t >= node_deadline_) {
    node_deadline_ = 0;
    if (step_ == Step::kQuit) {
      dropBackend();
      step_ = Step::kIdle;
    } else if (step_ == Step::kReady) {
      endBackend();
    } else if (step_ != Step::kIdle) {
      attemptFailed(BackendFailure::kTimeout, "no reply from the node in time");
      if (closing()) return;
    }
  }
  if (client_deadline_ && t >= client_deadline_ && !busy()) {
    client_deadline_ = 0;
    reply("421 4.4.2 " + hostname_ + " Error: timeout exceeded");
    closeAfterFlush("timeout");
    return;
  }
  updateTimer();
}

// ------------------------------------------------------------------ client input

void SmtpSession::onClientData(std::string_view plain) {
  if (phase_ == Phase::kTlsHandshake) return;  // cannot happen: handshake bytes go to TLS
  if (!greeted_) {
    // RFC 5321 §4.3.1: the client waits for the greeting. Talking first is the mark
    // of a spam engine that does not read replies.
    if (g_proto_log.allow())
      log::info("smtp client talked before the greeting", {{"session", id_}, {"client", client_ip_}});
    reply("554 5.5.0 " + hostname_ + " Error: talked before the greeting");
    closeAfterFlush("early_talker");
    return;
  }
  in_.append(plain);
  if (busy()) {
    if (in_.size() - in_off_ > kMaxHeld) {
      reply("421 4.7.0 " + hostname_ + " Error: too much pipelined input");
      closeAfterFlush("protocol_error");
    }
    return;
  }
  armClientTimer();
  process();
}

void SmtpSession::process() {
  // A handler may finish a busy phase synchronously (a failed delivery, a full
  // worker queue) and call process() again: the outer loop goes on from the right
  // offset instead, or the rest of a message would be parsed as commands.
  if (in_process_) return;
  in_process_ = true;
  struct Reset {
    bool* flag;
    ~Reset() { *flag = false; }
  } reset{&in_process_};
  bool more = true;
  while (more && !closing() && !busy() && phase_ != Phase::kTlsHandshake) {
    std::string_view in(in_);
    in.remove_prefix(in_off_);
    const Phase before = phase_;
    size_t used = 0;
    switch (phase_) {
      case Phase::kCommand:
        if (in.empty())
          more = false;
        else
          used = processCommands(in);
        break;
      case Phase::kData:
        if (in.empty())
          more = false;
        else
          used = processData(in);
        break;
      case Phase::kBdat:
        used = processBdat(in);  // also with no input: a zero-octet chunk completes at once
        break;
      case Phase::kTlsHandshake:
      case Phase::kRcptLookup:
      case Phase::kDelivering:
      case Phase::kAuthLookup:
      case Phase::kAuthDelay:
      case Phase::kSenderLookup:
      case Phase::kFiltering:
        more = false;
        break;
    }
    in_off_ += used;
    if (discard_input_) {
      discard_input_ = false;
      const size_t rest = in_.size() - in_off_;
      if ((rest > 0 || parser_->hasPending()) && g_starttls_log.allow())
        log::warn("pipelined data after STARTTLS discarded", {{"session", id_},
                                                              {"client", client_ip_},
                                                              {"bytes", rest},
                                                              {"suppressed", g_starttls_log.suppressed()}});
      parser_->reset();
      in_.clear();
      in_off_ = 0;
      return;
    }
    if (used == 0 && phase_ == before) more = false;
  }
  if (in_off_ == in_.size()) {
    in_.clear();
    in_off_ = 0;
  } else if (in_off_ > 65536) {
    in_.erase(0, in_off_);
    in_off_ = 0;
  }
}

size_t SmtpSession::processCommands(std::string_view in) {
  codec::SmtpFeed r = parser_->feed(in);
  switch (r.status) {
    case codec::SmtpStatus::kNeedMore:
      break;
    case codec::SmtpStatus::kCommand:
      handleCommand(parser_->command());
      break;
    case codec::SmtpStatus::kSaslLine:
      if (sasl_wait_) {
        sasl_wait_ = false;
        saslStep(sasl_.respond(parser_->saslLine()));
      } else {
        badCommand("500 5.5.1 Error: unexpected line");
      }
      break;
    case codec::SmtpStatus::kError:
      parserError();
      break;
    case codec::SmtpStatus::kFatal:
      if (g_proto_log.allow())
        log::info("smtp fatal protocol error",
                  {{"session", id_}, {"client", client_ip_}, {"error", parser_->errorText()}});
      reply(std::to_string(parser_->errorCode()) + " " + std::string(parser_->errorEnhanced()) + " " +
            std::string(parser_->errorText()));
      closeAfterFlush("protocol_error");
      break;
  }
  return r.consumed;
}

void SmtpSession::parserError() {
  if (parser_->isFramingError()) {
    reactor_.stats.smtp_framing_errors++;
    if (g_smuggle_log.allow())
      log::warn("smtp bare CR/LF or NUL in a command line",
                {{"session", id_}, {"client", client_ip_}, {"error", parser_->errorText()}});
  } else if (g_proto_log.allow()) {
    log::info("smtp protocol error",
              {{"session", id_}, {"client", client_ip_}, {"error", parser_->errorText()}});
  }
  badCommand(std::to_string(parser_->errorCode()) + " " + std::string(parser_->errorEnhanced()) + " " +
             std::string(parser_->errorText()));
}

void SmtpSession::badCommand(std::string_view line) {
  bad_commands_++;
  reply(line);
  if (bad_commands_ >= listener_.max_bad_commands) {
    log::info("smtp too many errors", {{"session", id_}, {"client", client_ip_}, {"errors", bad_commands_}});
    reply("421 4.7.0 " + hostname_ + " Error: too many errors");
    closeAfterFlush("too_many_errors");
  }
}

void SmtpSession::resetTransaction() {
  in_txn_ = false;
  mail_from_.clear();
  smtputf8_ = false;
  body_8bit_ = false;
  parser_->setSmtpUtf8(false);
  rcpts_.clear();
  pending_rcpt_.clear();
  txn_route_.clear();
  target_ = nullptr;  // points into targets_
  targets_.clear();
  bdat_started_ = false;
  bdat_last_ = false;
  spool_->clear();
  body_off_ = 0;
  std::string().swap(body_chunk_);
}

void SmtpSession::handleCommand(const codec::SmtpCommand& c) {
  switch (c.verb) {
    case codec::SmtpVerb::kEhlo:
    case codec::SmtpVerb::kHelo: {
      resetTransaction();
      if (step_ == Step::kReady) endBackend();  // the node knows the old HELO name
      helo_.assign(c.arg);
      esmtp_ = c.verb == codec::SmtpVerb::kEhlo;
      if (!esmtp_) {
        reply("250 " + hostname_);
        return;
      }
      std::string r = "250-" + hostname_ + "\r\n";
      r += "250-PIPELINING\r\n";
      r += "250-SIZE " + std::to_string(listener_.max_message_size) + "\r\n";
      if (listener_.tls == conf::TlsMode::kStarttls && !clientTlsStarted()) r += "250-STARTTLS\r\n";
      r += "250-8BITMIME\r\n";
      r += "250-SMTPUTF8\r\n";
      r += "250-ENHANCEDSTATUSCODES\r\n";
      if (submission_ && authOffered()) r += "250-AUTH PLAIN LOGIN\r\n";
      r += "250 CHUNKING\r\n";
      writeClient(r);
      return;
    }
    case codec::SmtpVerb::kMail:
      handleMail(c);
      return;
    case codec::SmtpVerb::kRcpt:
      handleRcpt(c);
      return;
    case codec::SmtpVerb::kData:
      handleData();
      return;
    case codec::SmtpVerb::kBdat:
      handleBdat(c);
      return;
    case codec::SmtpVerb::kRset:
      resetTransaction();
      reply("250 2.0.0 Ok");
      return;
    case codec::SmtpVerb::kNoop:
      reply("250 2.0.0 Ok");
      return;
    case codec::SmtpVerb::kQuit:
      if (step_ == Step::kReady) endBackend();
      reply("221 2.0.0 Bye");
      closeAfterFlush("quit");
      return;
    case codec::SmtpVerb::kVrfy:
      reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
      return;
    case codec::SmtpVerb::kHelp:
      reply("214 2.0.0 See RFC 5321");
      return;
    case codec::SmtpVerb::kStarttls:
      handleStarttls();
      return;
    case codec::SmtpVerb::kAuth:
      if (!submission_) {
        badCommand("503 5.5.1 Error: authentication not enabled");
        return;
      }
      handleAuth(c);
      return;
    case codec::SmtpVerb::kUnknown:
      if (g_proto_log.allow())
        log::info("smtp unknown command", {{"session", id_}, {"client", client_ip_}, {"verb", c.verb_text}});
      badCommand("500 5.5.1 Error: command not recognized");
      return;
  }
}

void SmtpSession::handleStarttls() {
  if (listener_.tls != conf::TlsMode::kStarttls) {
    badCommand("502 5.5.1 Error: STARTTLS not available");
    return;
  }
  if (clientTlsStarted()) {
    badCommand("503 5.5.1 Error: TLS already active");
    return;
  }
  reply("220 2.0.0 Ready to start TLS");
  if (!startClientTls()) {
    closeAfterFlush("tls_unavailable");
    return;
  }
  // RFC 3207 §4.2: forget everything learnt before TLS; drop every byte already sent.
  phase_ = Phase::kTlsHandshake;
  discard_input_ = true;
  helo_.clear();
  esmtp_ = false;
  authenticated_ = false;
  user_.clear();
  sasl_.reset();
  resetTransaction();
}

void SmtpSession::onClientTlsReady() {
  phase_ = Phase::kCommand;
  armClientTimer();
  if (listener_.tls == conf::TlsMode::kImplicit) sendGreeting();
}

void SmtpSession::handleMail(const codec::SmtpCommand& c) {
  if (helo_.empty()) {
    badCommand("503 5.5.1 Error: send HELO/EHLO first");
    return;
  }
  if (in_txn_) {
    badCommand("503 5.5.1 Error: nested MAIL command");
    return;
  }
  if (submission_ && !authenticated_) {
    reply("530 5.7.0 Authentication required");
    return;
  }
  if (messages_ >= listener_.max_messages) {
    log::info("smtp message limit", {{"session", id_}, {"client", client_ip_}, {"messages", messages_}});
    reply("421 4.7.0 " + hostname_ + " Error: too many messages in this session");
    closeAfterFlush("message_limit");
    return;
  }
  if (c.has_size && c.size > listener_.max_message_size) {
    reply("552 5.3.4 Message size exceeds fixed limit");
    return;
  }
  if (c.body == codec::SmtpBody::kBinaryMime) {
    reply("555 5.5.4 BODY=BINARYMIME is not supported");
    return;
  }
  pending_mail_.assign(c.path);
  pending_utf8_ = c.smtputf8;
  pending_8bit_ = c.body == codec::SmtpBody::k8BitMime || c.smtputf8;
  const codec::SmtpAddress& a = c.address;
  if (!submission_ || listener_.sender_any || a.domain.empty()) {
    // MX: any sender; submission: the null sender (bounces, receipts) and <postmaster>
    // need no ownership.
    acceptMail();
    return;
  }
  char local[256];
  size_t n = codec::unquoteLocalPart(a.local_part, local, sizeof local);
  if (n == SIZE_MAX) {
    reply("501 5.1.7 Bad sender address syntax");
    return;
  }
  std::string address(local, n);
  address += '@';
  address += a.domainLower();
  phase_ = Phase::kSenderLookup;
  pauseClient(true);
  updateTimer();
  auto rt = rt_;
  uint32_t slot = this->slot(), gen = this->gen();
  Reactor* reactor = &reactor_;
  bool queued = reactor_.workers().submit([rt, user = user_, address, slot, gen, reactor] {
    auth::SenderResult r = rt->directory->senderAllowed(user, address);
    reactor->postToSession(slot, gen,
                           [r](Session& s) { static_cast<SmtpSession&>(s).onSenderAnswer(r); });
  });
  if (!queued) onSenderAnswer(auth::SenderResult::kTempFail);
}

void SmtpSession::acceptMail() {
  in_txn_ = true;
  messages_++;
  mail_from_.swap(pending_mail_);
  pending_mail_.clear();
  smtputf8_ = pending_utf8_;
  body_8bit_ = pending_8bit_;
  parser_->setSmtpUtf8(smtputf8_);
  reply("250 2.1.0 Ok");
}

void SmtpSession::onSenderAnswer(auth::SenderResult result) {
  if (phase_ != Phase::kSenderLookup || closing()) return;
  phase_ = Phase::kCommand;
  switch (result) {
    case auth::SenderResult::kAllowed:
      acceptMail();
      break;
    case auth::SenderResult::kDenied:
      log::info("smtp sender not owned by the user",
                {{"session", id_}, {"client", client_ip_}, {"user", user_}, {"from", pending_mail_}});
      reply("553 5.7.1 " + pending_mail_ + ": Sender address rejected: not owned by user " + user_);
      break;
    case auth::SenderResult::kTempFail:
      log::warn("smtp sender check failed", {{"session", id_}, {"user", user_}, {"from", pending_mail_}});
      reply("451 4.3.0 " + pending_mail_ + ": sender check failed, try again later");
      break;
  }
  pending_mail_.clear();
  resumeClient();
}

// ------------------------------------------------------------------ AUTH (submission)

bool SmtpSession::authOffered() const {
  return clientTlsActive() || listener_.allow_plaintext_auth;
}

void SmtpSession::handleAuth(const codec::SmtpCommand& c) {
  if (helo_.empty() || !esmtp_) {
    badCommand("503 5.5.1 Error: send EHLO first");
    return;
  }
  if (authenticated_) {
    badCommand("503 5.5.1 Error: already authenticated");
    return;
  }
  if (in_txn_) {
    badCommand("503 5.5.1 Error: MAIL transaction in progress");
    return;
  }
  if (!authOffered()) {
    if (g_proto_log.allow())
      log::info("smtp AUTH refused without TLS", {{"session", id_}, {"client", client_ip_}});
    badCommand("538 5.7.11 Encryption required for requested authentication mechanism");
    return;
  }
  if (!sasl_.begin(c.arg)) {
    badCommand("504 5.5.4 Unrecognized authentication type");
    return;
  }
  if (c.has_initial_response) {
    saslStep(sasl_.respond(c.initial_response));
    return;
  }
  sasl_wait_ = true;
  parser_->expectSaslLine();
  reply("334 " + std::string(sasl_.initialChallenge()));
}

void SmtpSession::saslStep(SaslExchange::Step step) {
  switch (step) {
    case SaslExchange::Step::kChallenge:
      sasl_wait_ = true;
      parser_->expectSaslLine();
      reply("334 " + std::string(sasl_.challenge()));
      return;
    case SaslExchange::Step::kDone:
      beginAuth();
      return;
    case SaslExchange::Step::kCancelled:
      sasl_.reset();
      reply("501 5.7.0 Authentication cancelled");
      return;
    case SaslExchange::Step::kMalformed:
      sasl_.reset();
      badCommand("501 5.5.2 Cannot decode response");
      return;
    case SaslExchange::Step::kRejected:
      sasl_.reset();
      badCommand("535 5.7.8 Error: authentication failed: authorization identity not supported");
      return;
  }
}

void SmtpSession::beginAuth() {
  std::string user = std::move(sasl_.user());
  std::string password = std::move(sasl_.password());
  sasl_.reset();
  user_ = user;
  phase_ = Phase::kAuthLookup;
  pauseClient(true);
  updateTimer();
  auth::AuthContext ctx = authContext("smtp");
  ctx.attempt = auth_failures_ + 1;
  auto rt = rt_;
  uint32_t slot = this->slot(), gen = this->gen();
  Reactor* reactor = &reactor_;
  bool queued = reactor_.workers().submit(
      [rt, user = std::move(user), password = std::move(password), ctx, slot, gen, reactor]() mutable {
        auth::AuthResult r = rt->directory->authenticate(user, password, ctx);
        password.assign(password.size(), '\0');
        reactor->postToSession(slot, gen, [r = std::move(r)](Session& s) mutable {
          static_cast<SmtpSession&>(s).onAuthAnswer(std::move(r));
        });
      });
  if (!queued) {
    auth::AuthResult r;
    r.verdict = auth::Verdict::kTempFail;
    r.reason = "worker queue full";
    onAuthAnswer(std::move(r));
  }
}

void SmtpSession::onAuthAnswer(auth::AuthResult result) {
  if (phase_ != Phase::kAuthLookup || closing()) return;
  phase_ = Phase::kCommand;
  switch (result.verdict) {
    case auth::Verdict::kOk:
      if (!result.user.empty()) user_ = result.user;
      authenticated_ = true;
      reactor_.stats.logins++;
      log::info("login", {{"session", id_}, {"user", user_}, {"client", client_ip_}, {"protocol", "submission"}});
      reply("235 2.7.0 Authentication successful");
      break;
    case auth::Verdict::kBadPassword:
    case auth::Verdict::kUnknownUser: {
      reactor_.stats.auth_failures++;
      auth_failures_++;
      if (authLogLimit().allow())
        log::info("authentication failed", {{"session", id_},
                                            {"user", user_},
                                            {"client", client_ip_},
                                            {"reason", result.reason.empty() ? "bad credentials" : result.reason}});
      user_.clear();
      auto delay = result.wait.count() > 0 ? result.wait : rt_->config->directory.file.failure_delay;
      phase_ = Phase::kAuthDelay;
      auth_delay_until_ = now() + static_cast<uint64_t>(std::max<int64_t>(delay.count(), 1));
      updateTimer();
      return;  // the client stays paused until the 535
    }
    case auth::Verdict::kTempFail:
      reactor_.stats.temp_failures++;
      auth_failures_++;  // counted too: no endless loop on temporary failures
      if (authLogLimit().allow())
        log::warn("login temporarily failed",
                  {{"session", id_},
                   {"user", user_},
                   {"client", client_ip_},
                   {"reason", result.reason.empty() ? "directory unavailable" : result.reason}});
      user_.clear();
      if (auth_failures_ >= listener_.max_auth_attempts) {
        log::info("smtp too many authentication failures",
                  {{"session", id_}, {"client", client_ip_}, {"failures", auth_failures_}});
        reply("421 4.7.0 " + hostname_ + " Error: too many authentication failures");
        closeAfterFlush("too_many_auth_failures");
        return;
      }
      reply("454 4.7.0 Temporary authentication failure, try again later");
      break;
  }
  resumeClient();
}

void SmtpSession::handleRcpt(const codec::SmtpCommand& c) {
  if (!in_txn_) {
    badCommand("503 5.5.1 Error: need MAIL command");
    return;
  }
  if (rcpts_.size() >= listener_.max_recipients) {
    if (g_rcpt_limit_log.allow())
      log::info("smtp recipient limit", {{"session", id_},
                                         {"client", client_ip_},
                                         {"recipients", rcpts_.size()},
                                         {"suppressed", g_rcpt_limit_log.suppressed()}});
    reply("452 4.5.3 Error: too many recipients");
    return;
  }
  const codec::SmtpAddress& a = c.address;
  if (submission_ && a.domain.empty()) {
    reply("550 5.1.3 " + std::string(c.path) + ": Recipient address needs a domain");
    return;
  }
  if (!submission_ && (a.percent_hack || a.bang_path || a.address_literal)) {
    if (g_proto_log.allow())
      log::info("smtp relay attempt refused", {{"session", id_}, {"client", client_ip_}, {"rcpt", c.path}});
    reply("550 5.7.1 Relay access denied");
    return;
  }
  std::string address;
  if (a.is_postmaster && !listener_.postmaster.empty()) {
    // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted; it is the
    // listener's postmaster address, checked and routed like any recipient.
    const std::string& pm = listener_.postmaster;
    const size_t at = pm.rfind('@');
    address = pm.substr(0, at + 1);
    address += ascii::lower(std::string_view(pm).substr(at + 1));
    pending_rcpt_ = "<" + pm + ">";
  } else if (a.is_postmaster || a.domain.empty()) {
    reply("550 5.1.1 " + std::string(c.path) + ": Recipient address rejected: User unknown");
    return;
  } else {
    char local[256];
    size_t n = codec::unquoteLocalPart(a.local_part, local, sizeof local);
    if (n == SIZE_MAX) {
      reply("501 5.1.3 Bad recipient address syntax");
      return;
    }
    address.assign(local, n);
    address += '@';
    address += a.domainLower();
    pending_rcpt_.assign(c.path);
  }
  phase_ = Phase::kRcptLookup;
  pauseClient(true);
  updateTimer();
  auto rt = rt_;
  uint32_t slot = this->slot(), gen = this->gen();
  Reactor* reactor = &reactor_;
  const bool submission = submission_;
  auth::SmtpEnvelope env;
  if (!submission) {
    env.helo = helo_;
    const size_t lt = mail_from_.find('<'), gt = mail_from_.rfind('>');
    if (lt != std::string::npos && gt != std::string::npos && gt > lt)
      env.from = mail_from_.substr(lt + 1, gt - lt - 1);
    env.client = authContext("smtp");
  }
  bool queued = reactor_.workers().submit([rt, address, slot, gen, reactor, submission, env = std::move(env)] {
    // Submission: every recipient goes to the relay, which applies its own policy.
    auth::RecipientAnswer answer = submission ? auth::RecipientAnswer{auth::RecipientResult::kLocal, {}}
                                              : rt->directory->lookupRecipient(address, env);
    const auth::RecipientResult r = answer.result;
    std::vector<DeliveryTarget> targets;
    std::string key;
    if (r == auth::RecipientResult::kLocal) {
      // An alias goes to the node of its target mailbox.
      const std::string& route_by = answer.mailbox.empty() ? address : answer.mailbox;
      routing::Route route = submission ? rt->router->resolve(rt->config->routing.submission_relay, std::string())
                                        : rt->router->route(route_by);
      if (route.primary && route.primary->config) key = route.primary->config->name;
      // The relay always speaks SMTP; a node takes inbound mail as its `deliver` says.
      auto lmtp = [submission](const conf::BackendConfig& bc) { return !submission && bc.deliver != "smtp"; };
      for (Candidate& cand : routeCandidates(route, [&](const conf::BackendConfig& bc) {
             return lmtp(bc) ? bc.ports.lmtp : bc.ports.smtp;
           })) {
        DeliveryTarget t;
        static_cast<Candidate&>(t) = std::move(cand);
        t.lmtp = lmtp(*t.backend);
        targets.push_back(std::move(t));
      }
    }
    reactor->postToSession(
        slot, gen, [r, key = std::move(key), targets = std::move(targets)](Session& s) mutable {
          static_cast<SmtpSession&>(s).onRecipientAnswer(r, std::move(key), std::move(targets));
        });
  });
  if (!queued) onRecipientAnswer(auth::RecipientResult::kTempFail, {}, {});
}

void SmtpSession::onRecipientAnswer(auth::RecipientResult result, std::string route_key,
                                    std::vector<DeliveryTarget> targets) {
  if (phase_ != Phase::kRcptLookup || closing()) return;
  phase_ = Phase::kCommand;
  std::string path;
  path.swap(pending_rcpt_);
  switch (result) {
    case auth::RecipientResult::kLocal:
      if (targets.empty()) {
        log::warn("smtp no storage node for recipient", {{"session", id_}, {"rcpt", path}});
        reply("451 4.3.0 " + path + ": no storage node available, try again later");
      } else if (!rcpts_.empty() && route_key != txn_route_) {
        reply("452 4.5.3 " + path + ": recipient on another storage node, send it in a new transaction");
      } else {
        if (rcpts_.empty()) {
          txn_route_ = std::move(route_key);
          targets_ = std::move(targets);
        }
        rcpts_.push_back(path);
        reply("250 2.1.5 Ok");
      }
      break;
    case auth::RecipientResult::kUnknownMailbox:
      reply("550 5.1.1 " + path + ": Recipient address rejected: User unknown");
      break;
    case auth::RecipientResult::kForeignDomain:
      if (g_proto_log.allow())
        log::info("smtp relay attempt refused", {{"session", id_}, {"client", client_ip_}, {"rcpt", path}});
      reply("550 5.7.1 " + path + ": Relay access denied");
      break;
    case auth::RecipientResult::kTempFail:
      reply("451 4.3.0 " + path + ": recipient lookup failed, try again later");
      break;
  }
  resumeClient();
}

void SmtpSession::handleData() {
  if (!in_txn_) {
    badCommand("503 5.5.1 Error: need MAIL command");
    return;
  }
  if (rcpts_.empty()) {
    badCommand("554 5.5.1 Error: no valid recipients");
    return;
  }
  if (bdat_started_) {
    badCommand("503 5.5.1 Error: BDAT in progress");
    return;
  }
  reply("354 End data with <CR><LF>.<CR><LF>");
  data_.reset();
  data_.setMaxMessage(listener_.max_message_size);
  beginSpool();
  phase_ = Phase::kData;
}

void SmtpSession::handleBdat(const codec::SmtpCommand& c) {
  std::string refuse;
  if (!in_txn_)
    refuse = "503 5.5.1 Error: need MAIL command";
  else if (rcpts_.empty())
    refuse = "554 5.5.1 Error: no valid recipients";
  phase_ = Phase::kBdat;
  if (!refuse.empty()) {
    // RFC 3030: the chunk's octets follow anyway; read them, then refuse.
    bdat_reject_ = true;
    bdat_reject_reply_ = std::move(refuse);
    discard_left_ = c.bdat_size;
    return;
  }
  if (!bdat_started_) {
    bdat_started_ = true;
    bdat_.startMessage(false);
    bdat_.setMaxMessage(listener_.max_message_size);
    beginSpool();
  }
  bdat_last_ = c.bdat_last;
  bdat_.startChunk(c.bdat_size, c.bdat_last);
}

size_t SmtpSession::processData(std::string_view in) {
  codec::SmtpDataFeed r = data_.feed(in, *spool_);
  switch (r.status) {
    case codec::SmtpDataStatus::kNeedMore:
      break;
    case codec::SmtpDataStatus::kEnd:
      phase_ = Phase::kCommand;
      messageComplete(data_.error(), data_.messageSize());
      break;
    case codec::SmtpDataStatus::kFatal:
      log::warn("smtp data without end after an error",
                {{"session", id_}, {"client", client_ip_}, {"error", dataErrorName(data_.error())}});
      reply("421 4.7.0 " + hostname_ + " Error: message framing broken, closing");
      closeAfterFlush("protocol_error");
      break;
  }
  return r.consumed;
}

size_t SmtpSession::processBdat(std::string_view in) {
  if (bdat_reject_) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(discard_left_, in.size()));
    discard_left_ -= k;
    if (discard_left_ == 0) {
      bdat_reject_ = false;
      phase_ = Phase::kCommand;
      std::string r;
      r.swap(bdat_reject_reply_);
      badCommand(r);
    }
    return k;
  }
  codec::BdatFeed r = bdat_.feed(in, *spool_);
  switch (r.status) {
    case codec::BdatStatus::kNeedMore:
      break;
    case codec::BdatStatus::kChunk:
      phase_ = Phase::kCommand;
      if (bdat_.error() != codec::SmtpDataError::kNone) {
        messageComplete(bdat_.error(), bdat_.messageSize());
      } else {
        reply("250 2.0.0 " + std::to_string(bdat_.messageSize()) + " octets received");
      }
      break;
    case codec::BdatStatus::kLast:
      phase_ = Phase::kCommand;
      messageComplete(bdat_.error(), bdat_.messageSize());
      break;
  }
  return r.consumed;
}

void SmtpSession::beginSpool() {
  spool_->clear();
  std::string header;
  const bool tls = clientTlsActive();
  std::string proto = smtputf8_ ? "UTF8SMTP" : (esmtp_ ? "ESMTP" : "SMTP");
  if (tls) proto += 'S';
  if (authenticated_) proto += 'A';  // RFC 3848: ESMTPA, ESMTPSA
  std::string literal =
      client_ip_.find(':') != std::string::npos ? "[IPv6:" + client_ip_ + "]" : "[" + client_ip_ + "]";
  header =
      "Received: from " + helo_ + " (" + literal + ")\r\n\tby " + hostname_ + " (mailgate) with " + proto;
  if (tls) header += "\r\n\t(version=" + clientTlsVersion() + " cipher=" + clientTlsCipher() + ")";
  header += "\r\n\tid " + id_;
  if (rcpts_.size() == 1) header += "\r\n\tfor " + rcpts_[0];
  header += "; " + rfc5322Date() + "\r\n";
  spool_->write(header);
}

void SmtpSession::messageComplete(codec::SmtpDataError err, uint64_t size) {
  if (err != codec::SmtpDataError::kNone) {
    if (codec::isSmtpDataFramingError(err)) {
      reactor_.stats.smtp_framing_errors++;
      if (g_smuggle_log.allow())
        log::warn("smtp message refused: bare CR/LF or NUL in data (possible smuggling)",
                  {{"session", id_}, {"client", client_ip_}, {"error", dataErrorName(err)}, {"size", size}});
    } else {
      log::info("smtp message refused",
                {{"session", id_}, {"client", client_ip_}, {"error", dataErrorName(err)}});
    }
    codec::SmtpDataReply r = codec::smtpDataErrorReply(err);
    reactor_.stats.smtp_rejected++;
    resetTransaction();
    badCommand(std::to_string(r.code) + " " + std::string(r.enhanced) + " " + std::string(r.text));
    return;
  }
  if (!spool_->flush()) {
    log::error("smtp message not spooled", {{"session", id_}, {"client", client_ip_}, {"error", spool_->error()}});
    reactor_.stats.smtp_deferred++;
    resetTransaction();
    reply("452 4.3.1 Insufficient system storage, try again later");
    return;
  }
  if (spool_->inFile()) reactor_.stats.smtp_spooled_to_file++;
  if (rt_->content && !rt_->content->empty()) {
    runContentHooks();
    return;
  }
  startDelivery();
}

namespace {
// The spool as the hooks read it; shared, so it outlives a session that closes
// while a hook still runs.
class SpoolBody final : public filters::MessageBody {
 public:
  explicit SpoolBody(std::shared_ptr<MessageSpool> s) : s_(std::move(s)) {}
  uint64_t size() const override { return s_->size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override { return s_->read(off, n, out); }

 private:
  std::shared_ptr<MessageSpool> s_;
};
}  // namespace

void SmtpSession::runContentHooks() {
  phase_ = Phase::kFiltering;
  pauseClient(true);
  updateTimer();
  filters::MessageInfo info;
  info.session_id = id_;
  info.client_ip = client_ip_;
  info.helo = helo_;
  info.user = authenticated_ ? user_ : std::string();
  info.mail_from = mail_from_;
  info.rcpts = rcpts_;
  info.tls = clientTlsActive();
  auto chain = rt_->content;
  auto body = std::make_shared<SpoolBody>(spool_);
  uint32_t slot = this->slot(), gen = this->gen();
  Reactor* reactor = &reactor_;
  bool queued = reactor_.workers().submit([chain, body, info = std::move(info), slot, gen, reactor] {
    filters::Decision d = chain->run(info, *body);
    reactor->postToSession(slot, gen, [d = std::move(d)](Session& s) mutable {
      static_cast<SmtpSession&>(s).onContentDecision(std::move(d));
    });
  });
  if (!queued) {
    filters::Decision d;
    d.action = filters::Action::kTempFail;
    d.reply = "451 4.3.2 System busy, try again later";
    d.reason = "worker queue full";
    onContentDecision(std::move(d));
  }
}

void SmtpSession::onContentDecision(filters::Decision d) {
  if (phase_ != Phase::kFiltering || closing()) return;
  if (d.action == filters::Action::kAccept) {
    startDelivery();
    return;
  }
  log::info("smtp message refused by a content hook", {{"session", id_},
                                                       {"client", client_ip_},
                                                       {"from", mail_from_},
                                                       {"hook", d.hook},
                                                       {"reason", d.reason},
                                                       {"reply", d.reply}});
  if (d.action == filters::Action::kReject)
    reactor_.stats.smtp_rejected++;
  else
    reactor_.stats.smtp_deferred++;
  resetTransaction();
  phase_ = Phase::kCommand;
  reply(d.reply);
  resumeClient();
}

// ------------------------------------------------------------------ delivery

void SmtpSession::startDelivery() {
  phase_ = Phase::kDelivering;
  pauseClient(true);
  updateTimer();
  next_target_ = 0;
  final_failed_.clear();
  permanent_reply_.clear();
  utf8_refused_ = node_failed_ = false;
  if (step_ == Step::kReady) {
    if (!targets_.empty() && targets_[0].backend == ready_backend_ &&
        targets_[0].error.empty()) {
      // The kept connection goes to the first choice: straight to MAIL.
      next_target_ = 1;
      target_ = &targets_[0];
      backend_name_ = target_->backend->name;
      reused_ = true;
      body_queued_ = false;
      rcpt_index_ = 0;
      final_replies_ = 0;
      final_ok_ = 0;
      sendMail();
      return;
    }
    dropBackend();
    step_ = Step::kIdle;
    node_deadline_ = 0;
  }
  tryNextTarget();
}

void SmtpSession::tryNextTarget() {
  while (next_target_ < targets_.size()) {
    const DeliveryTarget& t = targets_[next_target_++];
    target_ = &t;
    backend_name_ = t.backend->name;
    if (!t.error.empty()) {
      node_failed_ = true;
      log::warn("backend unresolvable", {{"session", id_}, {"backend", t.backend->name}, {"error", t.error}});
      continue;
    }
    attempt_++;
    node_.reset();
    reused_ = false;
    node_pipelining_ = false;
    step_ = Step::kConnect;
    xclient_done_ = false;
    tls_done_ = false;
    body_queued_ = false;
    node_8bit_ = node_utf8_ = node_size_ = false;
    rcpt_index_ = 0;
    final_replies_ = 0;
    final_ok_ = 0;
    final_failed_.clear();
    armNodeTimer(2 * static_cast<uint64_t>(t.backend->connect_timeout.count()));
    connectBackend(t.addr, t.backend->connect_timeout);
    return;
  }
  target_ = nullptr;
  step_ = Step::kIdle;
  if (utf8_refused_ && !node_failed_) {
    deliveryDone("554 5.6.7 SMTPUTF8 is required, but no storage node offers it", "rejected");
    return;
  }
  log::warn("smtp delivery failed on every storage node",
            {{"session", id_}, {"from", mail_from_}, {"recipients", rcpts_.size()}});
  deliveryDone("451 4.4.1 Error: storage unavailable, try again later", "failed");
}

void SmtpSession::attemptFailed(BackendFailure why, const std::string& detail, bool permanent_reply) {
  if (g_attempt_log.allow())  // a client can trigger this (a message the node refuses)
    log::warn("delivery attempt failed", {{"session", id_},
                                          {"backend", target_ ? target_->backend->name : ""},
                                          {"class", failureName(why)},
                                          {"detail", detail},
                                          {"suppressed", g_attempt_log.suppressed()}});
  reactor_.stats.backend_failures++;
  node_deadline_ = 0;
  node_failed_ = true;
  if (permanent_reply) {
    // The node refused for good: the client gets the refusal (no other node would take it).
    // With a pipelined envelope the node may still answer DATA with 354: a QUIT would
    // then be message text, so the connection is dropped instead.
    if (node_pipelining_ && (step_ == Step::kMail || step_ == Step::kRcpt || step_ == Step::kData)) {
      dropBackend();
      step_ = Step::kIdle;
    } else {
      endBackend();
    }
    deliveryDone(permanent_reply_, "rejected");
    return;
  }
  dropBackend();
  step_ = Step::kIdle;
  if (reused_ && !body_queued_) {
    // The kept connection had gone stale (the node closed it, or answers 421 at the
    // end of its idle time or its per-connection limit): one fresh connection.
    reused_ = false;
    next_target_ = 0;
    tryNextTarget();
    return;
  }
  if (body_queued_ && why != BackendFailure::kTempRefusal) {
    // The node may have taken the message before the connection was lost: another
    // node would make a second copy. The client retries later.
    deliveryDone("451 4.4.1 Error: delivery outcome unknown, try again later", "unknown");
    return;
  }
  tryNextTarget();
}

void SmtpSession::sendNode(std::string_view line) {
  std::string out(line);
  out += "\r\n";
  writeBackend(out);
}

void SmtpSession::onBackendConnected() {
  step_ = Step::kGreeting;
  armNodeTimer(kNodeReplyMs);
  if (target_ && target_->backend->tls == conf::TlsMode::kImplicit) {
    if (!startBackendTls(target_->backend->name)) attemptFailed(BackendFailure::kTls, "cannot start TLS");
  }
}

void SmtpSession::onBackendTlsReady() {
  if (step_ == Step::kStarttls) {
    tls_done_ = true;
    node_.reset();
    sendHello(hostname_);
  }
}

void SmtpSession::onBackendFailed(BackendFailure why, const std::string& detail) {
  if (step_ == Step::kIdle || step_ == Step::kQuit || step_ == Step::kReady) {
    dropBackend();
    step_ = Step::kIdle;
    node_deadline_ = 0;
    updateTimer();
    return;
  }
  attemptFailed(why, detail);
}

void SmtpSession::onBackendData(std::string_view data) {
  const unsigned attempt = attempt_;
  while (!data.empty()) {
    codec::SmtpReplyFeed r = node_.feed(data);
    data.remove_prefix(r.consumed);
    if (r.status == codec::SmtpReplyStatus::kNeedMore) return;
    if (r.status == codec::SmtpReplyStatus::kError) {
      onBackendFailed(BackendFailure::kProtocol, "malformed reply: " + std::string(node_.errorText()));
      return;
    }
    handleNodeReply(node_.reply());
    if (attempt != attempt_ || closing() || step_ == Step::kIdle) return;
  }
}

void SmtpSession::sendHello(const std::string& name) {
  step_ = Step::kHello;
  armNodeTimer(kNodeReplyMs);
  sendNode((target_->lmtp ? "LHLO " : "EHLO ") + name);
}

void SmtpSession::sendMail() {
  if (smtputf8_ && !node_utf8_ && envelopeNeedsUtf8()) {
    // RFC 6531 §3.2: an internationalized address never goes to a server that does
    // not offer SMTPUTF8. Not the node's failure: the next node may offer it; when
    // none does, the transaction is refused (tryNextTarget).
    log::info("storage node does not offer SMTPUTF8", {{"session", id_}, {"backend", backend_name_}});
    utf8_refused_ = true;
    dropBackend();
    step_ = Step::kIdle;
    node_deadline_ = 0;
    tryNextTarget();
    return;
  }
  step_ = Step::kMail;
  armNodeTimer(kNodeReplyMs);
  std::string line = "MAIL FROM:" + mail_from_;
  if (node_size_) line += " SIZE=" + std::to_string(spool_->size());
  if (body_8bit_ && node_8bit_) line += " BODY=8BITMIME";
  if (smtputf8_ && node_utf8_) line += " SMTPUTF8";
  if (node_pipelining_) {
    // RFC 2920: MAIL, every RCPT and DATA in one write; the replies are read in order.
    line += "\r\n";
    for (const std::string& r : rcpts_) line += "RCPT TO:" + r + "\r\n";
    line += "DATA\r\n";
    writeBackend(line);
    return;
  }
  sendNode(line);
}

bool SmtpSession::envelopeNeedsUtf8() const {
  auto eight_bit = [](std::string_view a) {
    return std::any_of(a.begin(), a.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
  };
  return eight_bit(mail_from_) || std::any_of(rcpts_.begin(), rcpts_.end(), eight_bit);
}

namespace {
// Dot-stuffing (RFC 5321 §4.5.2) of one piece of the body; the spool has CRLF line
// ends only. *line_start carries across pieces.
void stuff(std::string_view in, bool* line_start, std::string* out) {
  out->reserve(out->size() + in.size() + in.size() / 32 + 8);
  for (size_t i = 0; i < in.size();) {
    if (*line_start && in[i] == '.') *out += '.';
    size_t nl = in.find('\n', i);
    size_t end = nl == std::string_view::npos ? in.size() : nl + 1;
    out->append(in.substr(i, end - i));
    *line_start = nl != std::string_view::npos;
    i = end;
  }
}
constexpr size_t kBodyChunk = 64 * 1024;
}  // namespace

void SmtpSession::sendBody() {
  body_off_ = 0;
  body_line_start_ = true;
  if (spool_->inFile()) {
    step_ = Step::kBody;
    pumpBody();
    return;
  }
  std::string out;
  stuff(spool_->memory(), &body_line_start_, &out);
  finishBody(std::move(out));
}

void SmtpSession::pumpBody() {
  // Called at the start and whenever the node's queue falls below kBackendLowWater:
  // one chunk of the message is read and queued at a time.
  if (step_ != Step::kBody) return;
  if (body_off_ < spool_->size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kBodyChunk, spool_->size() - body_off_));
    if (!spool_->read(body_off_, n, &body_chunk_) || body_chunk_.size() != n) {
      log::error("smtp spool read failed", {{"session", id_}, {"error", spool_->error()}});
      attemptFailed(BackendFailure::kInternal, "spool read failed");
      return;
    }
    body_off_ += n;
    std::string out;
    stuff(body_chunk_, &body_line_start_, &out);
    armNodeTimer(kNodeReplyMs);
    writeBackend(out);
    if (closing() || step_ != Step::kBody || body_off_ < spool_->size()) return;  // onBackendDrained continues
  }
  std::string().swap(body_chunk_);
  finishBody({});
}

void SmtpSession::finishBody(std::string out) {
  if (spool_->size() > 0 && spool_->tail() != "\r\n") out += "\r\n";
  out += ".\r\n";
  body_queued_ = true;
  step_ = Step::kFinal;
  armNodeTimer(kNodeFinalMs);
  writeBackend(out);
}

void SmtpSession::onBackendDrained() {
  if (step_ == Step::kBody) pumpBody();
}

void SmtpSession::handleNodeReply(const codec::SmtpReply& r) {
  last_node_reply_ = replyText(r);
  auto refused = [&](const char* what) {
    if (r.permanent()) {
      permanent_reply_ = std::to_string(r.code) + " " +
                         (r.enhanced_text.empty() ? std::string("5.0.0") : std::string(r.enhanced_text)) +
                         " Storage refused " + what;
      attemptFailed(BackendFailure::kTempRefusal, last_node_reply_, true);
    } else {
      attemptFailed(BackendFailure::kTempRefusal, last_node_reply_);
    }
  };
  switch (step_) {
    case Step::kIdle:
    case Step::kConnect:
      onBackendFailed(BackendFailure::kProtocol, "unexpected reply");
      return;
    case Step::kGreeting:
      if (r.code != 220) {
        attemptFailed(BackendFailure::kTempRefusal, last_node_reply_);
        return;
      }
      sendHello(hostname_);
      return;
    case Step::kHello: {
      codec::SmtpEhlo ehlo;
      if (!parseEhloReply(r, &ehlo)) {
        attemptFailed(BackendFailure::kProtocol, last_node_reply_);
        return;
      }
      node_8bit_ = ehlo.eightbitmime;
      node_utf8_ = ehlo.smtputf8;
      node_size_ = ehlo.size;
      node_pipelining_ = ehlo.pipelining;
      if (target_->backend->tls == conf::TlsMode::kStarttls && !tls_done_) {
        if (!ehlo.starttls) {
          attemptFailed(BackendFailure::kTls, "node does not offer STARTTLS");
          return;
        }
        step_ = Step::kStarttls;
        armNodeTimer(kNodeReplyMs);
        sendNode("STARTTLS");
        return;
      }
      if (ehlo.xclient && !xclient_done_) {
        std::string line = "XCLIENT";
        if (ehlo.xclient_attrs & codec::kXclientAddr)
          line +=
              " ADDR=" + xtext(client_ip_.find(':') != std::string::npos ? "IPV6:" + client_ip_ : client_ip_);
        if (ehlo.xclient_attrs & codec::kXclientPort) line += " PORT=" + std::to_string(client_port_);
        if (ehlo.xclient_attrs & codec::kXclientHelo)
          line += " HELO=" + (helo_.empty() ? "[UNAVAILABLE]" : xtext(helo_));
        if (ehlo.xclient_attrs & codec::kXclientProto)
          line += std::string(" PROTO=") + (esmtp_ ? "ESMTP" : "SMTP");
        if ((ehlo.xclient_attrs & codec::kXclientLogin) && !user_.empty()) line += " LOGIN=" + xtext(user_);
        if (line.size() > 7) {
          step_ = Step::kXclient;
          xclient_done_ = true;
          armNodeTimer(kNodeReplyMs);
          sendNode(line);
          return;
        }
      }
      sendMail();
      return;
    }
    case Step::kStarttls:
      if (r.code != 220) {
        attemptFailed(BackendFailure::kTls, last_node_reply_);
        return;
      }
      if (!startBackendTls(target_->backend->name)) attemptFailed(BackendFailure::kTls, "cannot start TLS");
      return;  // onBackendTlsReady continues
    case Step::kXclient:
      if (r.positive()) {
        // XCLIENT restarts the session: greet again, in the client's name, or the
        // node records the gateway's name as the client's HELO.
        sendHello(helo_.empty() ? hostname_ : helo_);
      } else {
        log::warn("node refused XCLIENT",
                  {{"session", id_}, {"backend", target_->backend->name}, {"reply", last_node_reply_}});
        sendMail();
      }
      return;
    case Step::kMail:
      if (!r.positive()) {
        refused("the sender");
        return;
      }
      rcpt_index_ = 0;
      step_ = Step::kRcpt;
      armNodeTimer(kNodeReplyMs);
      if (!node_pipelining_) sendNode("RCPT TO:" + rcpts_[0]);
      return;
    case Step::kRcpt:
      if (!r.positive()) {
        refused(("the recipient " + rcpts_[rcpt_index_]).c_str());
        return;
      }
      if (++rcpt_index_ < rcpts_.size()) {
        armNodeTimer(kNodeReplyMs);
        if (!node_pipelining_) sendNode("RCPT TO:" + rcpts_[rcpt_index_]);
        return;
      }
      step_ = Step::kData;
      armNodeTimer(kNodeReplyMs);
      if (!node_pipelining_) sendNode("DATA");
      return;
    case Step::kData:
      if (r.code != 354) {
        refused("the message");
        return;
      }
      sendBody();
      return;
    case Step::kBody:  // nothing is due while the message streams
      attemptFailed(BackendFailure::kProtocol, "reply before the end of data: " + last_node_reply_);
      return;
    case Step::kFinal: {
      const size_t expected = target_->lmtp ? rcpts_.size() : 1;
      const size_t i = final_replies_++;
      if (r.positive()) {
        final_ok_++;
      } else {
        if (!final_failed_.empty()) final_failed_ += ", ";
        final_failed_ += (target_->lmtp ? rcpts_[i] + " " : std::string()) + last_node_reply_;
        if (permanent_reply_.empty() && r.permanent())
          permanent_reply_ = std::to_string(r.code) + " " +
                             (r.enhanced_text.empty() ? std::string("5.0.0") : std::string(r.enhanced_text)) +
                             " Storage refused the message";
        if (!r.permanent()) permanent_reply_ = "-";  // some refusal was temporary
      }
      if (final_replies_ < expected) {
        armNodeTimer(kNodeFinalMs);
        return;
      }
      node_deadline_ = 0;
      if (final_ok_ == expected) {
        // Kept for the client's next message.
        step_ = Step::kReady;
        ready_backend_ = target_->backend;
        armNodeTimer(kNodeIdleMs);
        log::info("smtp delivered", {{"session", id_},
                                     {"client", client_ip_},
                                     {"from", mail_from_},
                                     {"recipients", rcpts_.size()},
                                     {"size", spool_->size()},
                                     {"backend", target_->backend->name},
                                     {"reply", last_node_reply_}});
        deliveryDone("250 2.0.0 Ok: delivered as " + id_ + "-" + std::to_string(messages_), "delivered");
        return;
      }
      if (final_ok_ > 0) {
        // Part delivered: nothing is acknowledged that was not delivered; the client
        // retries the whole transaction.
        log::warn("smtp delivery partly refused by the node",
                  {{"session", id_}, {"backend", target_->backend->name}, {"failed", final_failed_}});
        endBackend();
        deliveryDone("451 4.4.1 Error: delivery incomplete, try again later", "partial");
        return;
      }
      if (!permanent_reply_.empty() && permanent_reply_ != "-") {
        log::warn("smtp message refused by the node",
                  {{"session", id_}, {"backend", target_->backend->name}, {"failed", final_failed_}});
        endBackend();
        deliveryDone(permanent_reply_, "rejected");
        return;
      }
      permanent_reply_.clear();
      attemptFailed(BackendFailure::kTempRefusal, final_failed_);
      return;
    }
    case Step::kReady:  // e.g. the node's own idle timeout (421): forget the connection
    case Step::kQuit:
      dropBackend();
      step_ = Step::kIdle;
      node_deadline_ = 0;
      updateTimer();
      return;
  }
}

void SmtpSession::endBackend() {
  if (step_ == Step::kIdle || step_ == Step::kConnect) {
    dropBackend();
    step_ = Step::kIdle;
    return;
  }
  step_ = Step::kQuit;
  sendNode("QUIT");
  armNodeTimer(kNodeQuitMs);
}

void SmtpSession::deliveryDone(std::string_view client_reply, const char* outcome) {
  if (std::string_view(outcome) != "delivered")
    log::info("smtp message not accepted", {{"session", id_},
                                            {"client", client_ip_},
                                            {"from", mail_from_},
                                            {"recipients", rcpts_.size()},
                                            {"outcome", outcome},
                                            {"reply", client_reply}});
  if (step_ != Step::kQuit && step_ != Step::kReady) node_deadline_ = 0;
  if (!client_reply.empty() && client_reply[0] == '2')
    reactor_.stats.smtp_delivered++;
  else if (!client_reply.empty() && client_reply[0] == '4')
    reactor_.stats.smtp_deferred++;
  else
    reactor_.stats.smtp_rejected++;
  resetTransaction();
  phase_ = Phase::kCommand;
  reply(client_reply);
  resumeClient();
}

}  // namespace mailgate::session
