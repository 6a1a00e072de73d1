#include "gateway/session/smtp_session.h"

#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <random>

#include "filters/policy/net_prefix.h"
#include "filters/policy/policy.h"
#include "filters/policy/policy_state.h"
#include "filters/quarantine.h"
#include "gateway/queue/queue_store.h"
#include "gateway/session/node_delivery.h"
#include "filters/scan_result.h"
#include "gateway/codec/header_field.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/session/executor_step.h"
#include "gateway/session/reactor.h"

namespace mailgate::session {

namespace {
// Client bytes held while a lookup or a delivery runs (the client is paused, so
// only what was already in flight arrives).
constexpr size_t kMaxHeld = 1 << 20;
// How long the end of a message may take to reach the spool file.
constexpr uint64_t kSpoolWaitMs = 60000;
// The session's own directory steps in its filter chain are named with this prefix.
constexpr std::string_view kOwnStepPrefix = "directory-";
log::RateLimit g_proto_log(20);
log::RateLimit g_smuggle_log(20);
// Lines a client can produce at will, each with its own limiter.
log::RateLimit g_starttls_log(20);

codec::SmtpLimits limitsFor(const conf::ListenerConfig& l) {
  codec::SmtpLimits lim;
  lim.max_line = l.max_line ? l.max_line : 512;
  return lim;
}

// A short reference that a refusal's reply and its log line repeat.
std::string newRef() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  static const char kHex[] = "0123456789abcdef";
  uint32_t v = rng();
  std::string r(6, '0');
  for (int i = 5; i >= 0; i--) {
    r[static_cast<size_t>(i)] = kHex[v & 15];
    v >>= 4;
  }
  return r;
}


std::string rfc5322Date() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return std::string(buf, n);
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
      hostname_(rt_->hostname),
      submission_(listener.protocol == conf::Protocol::kSubmission),
      spool_(newSpool()),
      node_client_(node_link_, node_link_, id_, hostname_) {}

std::shared_ptr<MessageSpool> SmtpSession::newSpool() {
  auto spool = std::make_shared<MessageSpool>(rt_->config->server.spool_memory, rt_->config->server.spool_dir);
  // Spool files are opened, written and read on the reactor's spool thread.
  Reactor* r = &reactor_;
  const uint32_t slot = this->slot(), gen = this->gen();
  spool->setAsync({[r](std::function<void()> job) { return r->spoolIo().submit(std::move(job)); },
                   [r, slot, gen](std::function<void()> fn) {
                     r->postToSession(slot, gen, [fn = std::move(fn)](Session&) { fn(); });
                   }});
  spool->onDrained([this] {
    if (!closing() && !busy()) pauseClient(false);
  });
  return spool;
}

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
  greeted_ = true;
  reply("220 " + (listener_.banner.empty() ? hostname_ + " ESMTP mailgate" : listener_.banner));
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

bool SmtpSession::earlyTalkerListener() const {
  for (const auto& name : rt_->config->policy.limits.early_talker.listeners)
    if (name == listener_.name) return true;
  return false;
}

void SmtpSession::refuseEarlyTalker(std::string_view what, std::string_view reject_line, size_t bytes) {
  filters::policy::policyState().stats.early_talkers++;
  const conf::LimitAction action = rt_->config->policy.limits.early_talker.action;
  const bool temporary = action == conf::LimitAction::kTempfail || action == conf::LimitAction::kDelay;
  const std::string ref = newRef();
  const char* done = temporary ? "tempfail" : "reject";
  if (action == conf::LimitAction::kBan) {
    // As reject, and the client's network is banned (unless limits.bans.never covers it).
    namespace pol = filters::policy;
    pol::NetAddr addr;
    if (rt_->policy && pol::parseAddr(client_ip_, &addr) && !rt_->policy->neverBan(addr)) {
      const pol::Ban b =
          pol::policyState().bans.ban(rt_->policy->banNet(addr), rt_->policy->banParams(), "early_talker",
                                      hostname_, pol::BanTable::wallMs());
      pol::policyState().stats.bans_made++;
      done = "ban";
      log::warn("policy ban", {{"session", id_},
                               {"client", client_ip_},
                               {"net", rt_->policy->banNet(addr).text()},
                               {"limit", "early_talker"},
                               {"level", b.level},
                               {"seconds", static_cast<uint64_t>((b.expires_ms - b.created_ms) / 1000)}});
    }
  }
  static log::RateLimit rl(20);  // a client can trigger this at will
  if (rl.allow())
    log::info("smtp early talker refused", {{"session", id_},
                                            {"client", client_ip_},
                                            {"listener", listener_.name},
                                            {"test", what},
                                            {"bytes", bytes},
                                            {"action", done},
                                            {"ref", ref},
                                            {"suppressed", rl.suppressed()}});
  std::string line = temporary
                         ? "421 4.7.0 " + hostname_ + " Error: " + std::string(what) + ", try again later"
                         : std::string(reject_line) + ": " + std::string(what);
  line += " (ref " + ref + ")";
  reply(line);
  closeAfterFlush("early_talker");
}

void SmtpSession::updateTimer() {
  uint64_t at = 0;
  if (client_deadline_ && !busy()) at = client_deadline_;
  if (auth_delay_until_ && (at == 0 || auth_delay_until_ < at)) at = auth_delay_until_;
  if (spool_deadline_ && (at == 0 || spool_deadline_ < at)) at = spool_deadline_;
  if (node_deadline_ && (at == 0 || node_deadline_ < at)) at = node_deadline_;
  const auto lt = static_cast<uint64_t>(rt_->config->policy.limits.line_timeout.count());
  if (line_started_ && lt > 0 && phase_ == Phase::kCommand && !busy() && (at == 0 || line_started_ + lt < at))
    at = line_started_ + lt;
  if (at)
    setTimer(at);
  else
    clearTimer();
}

void SmtpSession::onTimer() {
  const uint64_t t = now();
  if (auth_delay_until_ && t >= auth_delay_until_) {
    auth_delay_until_ = 0;
    if (phase_ == Phase::kAuthDelay) {
      phase_ = Phase::kCommand;
      if (closeOnTooManyAuthFailures()) return;
      reply("535 5.7.8 Error: authentication failed");
      resumeClient();
      if (closing()) return;
    }
  }
  if (spool_deadline_ && t >= spool_deadline_) {
    spool_deadline_ = 0;
    if (phase_ == Phase::kSpooling) {
      // The disk did not take the message in time: refuse it (the spool thread's late
      // answer is for content cleared by then, and is dropped).
      log::error("smtp message not spooled in time", {{"session", id_}, {"client", client_ip_}});
      reactor_.stats.smtp_deferred++;
      resetTransaction();
      phase_ = Phase::kCommand;
      reply("451 4.3.0 Error: message not stored in time, try again later");
      resumeClient();
      if (closing()) return;
    }
  }
  if (node_deadline_ && t >= node_deadline_) {
    node_deadline_ = 0;
    node_client_.onTimeout();
    if (closing()) return;
  }
  const auto lt = static_cast<uint64_t>(rt_->config->policy.limits.line_timeout.count());
  if (line_started_ && lt > 0 && phase_ == Phase::kCommand && !busy() && t >= line_started_ + lt) {
    // A command line started and not ended in time, however slowly its bytes came.
    filters::policy::policyState().stats.line_timeouts++;
    static log::RateLimit rl(20);  // a client can trigger this at will
    if (rl.allow())
      log::info("command line timeout", {{"session", id_},
                                         {"client", client_ip_},
                                         {"listener", listener_.name},
                                         {"suppressed", rl.suppressed()}});
    reply("421 4.4.2 " + hostname_ + " Error: timeout exceeded");
    closeAfterFlush("line_timeout");
    return;
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
    if (earlyTalkerListener()) {
      refuseEarlyTalker("talked before the greeting", "554 5.5.1 " + hostname_ + " Error", plain.size());
      return;
    }
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
      case Phase::kDelivering:
      case Phase::kAuthDelay:
      case Phase::kWaiting:
      case Phase::kSpooling:
        more = false;
        break;
    }
    in_off_ += used;
    if (spool_->congested()) pauseClient(true);  // the spool thread is behind: stop reading
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
  // limits.line_timeout: a started command line must end in time (not DATA/BDAT content).
  if (phase_ != Phase::kCommand || !parser_->hasPending()) {
    line_started_ = 0;
  } else if (line_started_ == 0) {
    line_started_ = now();
    updateTimer();
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
      line_started_ = 0;
      input_after_line_ = in.size() - r.consumed;  // also bytes held while busy
      handleCommand(parser_->command());
      break;
    case codec::SmtpStatus::kSaslLine:
      line_started_ = 0;
      if (sasl_wait_) {
        sasl_wait_ = false;
        saslStep(sasl_.respond(parser_->saslLine()));
      } else {
        badCommand("500 5.5.1 Error: unexpected line");
      }
      break;
    case codec::SmtpStatus::kError:
      line_started_ = 0;
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
  if (const filters::Verdict pv = notifyEvent(filters::EventKind::kError); filters::isTerminal(pv.action)) {
    filters::Verdict bye = pv;
    bye.action = filters::Action::kClose;
    reply(renderSmtp(bye, filters::Stage::kClose, hostname_).line);
    closeAfterFlush("refused_by_policy");
    return;
  }
  if (bad_commands_ >= listener_.max_bad_commands) {
    log::info("smtp too many errors", {{"session", id_}, {"client", client_ip_}, {"errors", bad_commands_}});
    reply("421 4.7.0 " + hostname_ + " Error: too many errors");
    closeAfterFlush("too_many_errors");
  }
}

void SmtpSession::resetTransaction() {
  in_txn_ = false;
  mail_from_.clear();
  facts_.from.reset();
  facts_.mail_path.clear();
  smtputf8_ = false;
  body_8bit_ = false;
  parser_->setSmtpUtf8(false);
  facts_.rcpts.clear();
  facts_.scan_results.clear();
  pending_rcpt_.clear();
  txn_route_.clear();
  targets_.clear();
  bdat_started_ = false;
  bdat_last_ = false;
  facts_.message.reset();
  replacement_.reset();
  std::string().swap(delivery_headers_);
  std::vector<queue::QueueRcpt>().swap(queued_rcpts_);
  if (spool_.use_count() > 1) {
    // A hook whose deadline passed still reads the old message: leave it that one.
    spool_ = newSpool();
  } else {
    spool_->clear();
  }
}

void SmtpSession::handleCommand(const codec::SmtpCommand& c) {
  if (shuttingDown() && c.verb != codec::SmtpVerb::kQuit) {
    sayGoodbye();  // 421 to the next command
    return;
  }
  switch (c.verb) {
    case codec::SmtpVerb::kEhlo:
    case codec::SmtpVerb::kHelo: {
      if (input_after_line_ > 0 && earlyTalkerListener()) {
        // postscreen's pipelining test: EHLO's reply says whether PIPELINING is
        // allowed at all, so a client that sent more before reading it does not wait.
        refuseEarlyTalker("pipelining before the EHLO reply", "550 5.5.1 " + hostname_ + " Protocol error",
                          input_after_line_);
        return;
      }
      resetTransaction();
      node_client_.releaseKept();  // the node knows the old HELO name
      helo_.assign(c.arg);
      facts_.helo = helo_;
      esmtp_ = c.verb == codec::SmtpVerb::kEhlo;
      if (stageWanted(filters::Stage::kHelo)) {
        waitFor(filters::Stage::kHelo);  // the reply follows in onStageDone
        return;
      }
      sendHeloReply();
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
      node_client_.releaseKept();
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
  facts_.helo.clear();
  facts_.user.clear();
  facts_.authenticated = false;
  esmtp_ = false;
  authenticated_ = false;
  user_.clear();
  sasl_.reset();
  resetTransaction();
}

void SmtpSession::onClientTlsReady() {
  phase_ = Phase::kCommand;
  facts_.secured = true;
  facts_.tls_version = clientTlsVersion();
  armClientTimer();
  if (listener_.tls == conf::TlsMode::kImplicit) sendGreeting();
}

void SmtpSession::sendHeloReply() {
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
  facts_.mail_path = pending_mail_;
  {
    // The sender as the mail stage's filters see it (local@domain, "" = null sender).
    const size_t lt = pending_mail_.find('<'), gt = pending_mail_.rfind('>');
    if (lt != std::string::npos && gt != std::string::npos && gt > lt)
      facts_.from = pending_mail_.substr(lt + 1, gt - lt - 1);
    else
      facts_.from.reset();
  }
  const codec::SmtpAddress& a = c.address;
  if (!submission_ || listener_.sender_any || a.domain.empty()) {
    // MX: any sender; submission: the null sender (bounces, receipts) and <postmaster>
    // need no ownership. The configured filters of the mail stage still run.
    if (rt_->filters->empty()) {
      acceptMail();
      return;
    }
    sender_asked_ = false;
    waitFor(filters::Stage::kMail);
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
  sender_step_->set([this, rt = rt_, user = user_, address]() -> filters::Resumer::Answer {
    auth::SenderResult r = rt->directory->senderAllowed(user, address);  // directory executor
    return [this, r](filters::SessionFacts&) {
      sender_result_ = r;
      return filters::Verdict::next();
    };
  });
  sender_result_ = auth::SenderResult::kTempFail;
  sender_asked_ = true;
  waitFor(filters::Stage::kMail);
}

void SmtpSession::acceptMail() {
  in_txn_ = true;
  messages_++;
  mail_from_.swap(pending_mail_);
  pending_mail_.clear();
  const size_t lt = mail_from_.find('<'), gt = mail_from_.rfind('>');
  if (lt != std::string::npos && gt != std::string::npos && gt > lt)
    facts_.from = mail_from_.substr(lt + 1, gt - lt - 1);
  else
    facts_.from.reset();
  smtputf8_ = pending_utf8_;
  body_8bit_ = pending_8bit_;
  parser_->setSmtpUtf8(smtputf8_);
  reply("250 2.1.0 Ok");
}

void SmtpSession::onSenderAnswer(auth::SenderResult result) {
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
  facts_.user = user_;
  facts_.attempt = auth_failures_ + 1;
  auth_credential_ = filters::policy::credentialHash(user, password);
  auth_step_->set([this, rt = rt_, user = std::move(user), password = std::move(password),
                   facts = directoryFacts()]() mutable -> filters::Resumer::Answer {
    auth::AuthResult r = rt->directory->authenticate(user, password, facts);  // directory executor
    password.assign(password.size(), '\0');
    return [this, r = std::move(r)](filters::SessionFacts&) mutable {
      auth_result_ = std::move(r);
      return filters::Verdict::next();
    };
  });
  auth_result_ = auth::AuthResult{};
  auth_result_.verdict = auth::Verdict::kTempFail;
  auth_result_.reason = "directory gave no answer";
  waitFor(filters::Stage::kAuth);
}

bool SmtpSession::closeOnTooManyAuthFailures() {
  if (auth_failures_ < listener_.max_auth_attempts) return false;
  log::info("smtp too many authentication failures",
            {{"session", id_}, {"client", client_ip_}, {"failures", auth_failures_}});
  reply("421 4.7.0 " + hostname_ + " Error: too many authentication failures");
  closeAfterFlush("too_many_auth_failures");
  return true;
}

void SmtpSession::onAuthAnswer(auth::AuthResult result) {
  switch (result.verdict) {
    case auth::Verdict::kOk: {
      if (!result.user.empty()) user_ = result.user;
      auth_credential_ = 0;
      facts_.user = user_;
      facts_.authenticated = true;
      if (const filters::Verdict pv = notifyEvent(filters::EventKind::kAuthSuccess); filters::isTerminal(pv.action)) {
        facts_.authenticated = false;
        facts_.user.clear();
        user_.clear();
        reply(renderSmtp(pv, filters::Stage::kAuth, hostname_).line);
        break;
      }
      authenticated_ = true;
      reactor_.stats.logins++;
      log::info("login", {{"session", id_},
                          {"listener", listener_.name},
                          {"user", user_},
                          {"client", client_ip_},
                          {"client_port", client_port_},
                          {"protocol", "submission"}});
      reply("235 2.7.0 Authentication successful");
      break;
    }
    case auth::Verdict::kBadPassword:
    case auth::Verdict::kUnknownUser: {
      reactor_.stats.auth_failures++;
      auth_failures_++;
      if (authLogLimit().allow())
        log::info("authentication failed", {{"session", id_},
                                            {"user", user_},
                                            {"client", client_ip_},
                                            {"reason", result.reason.empty() ? "bad credentials" : result.reason}});
      auto delay = result.wait.count() > 0 ? result.wait : rt_->config->directory.file.failure_delay;
      const filters::Verdict pv = notifyEvent(filters::EventKind::kAuthFailure, auth_credential_);
      auth_credential_ = 0;
      user_.clear();
      if (filters::isTerminal(pv.action)) {  // banned, or over an auth-failure limit that refuses
        reply("535 5.7.8 Error: authentication failed");
        filters::Verdict bye = pv;
        bye.action = filters::Action::kClose;
        reply(renderSmtp(bye, filters::Stage::kAuth, hostname_).line);
        closeAfterFlush("refused_by_policy");
        return;
      }
      if (pv.action == filters::Action::kDelay) delay = std::max(delay, pv.delay);
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
      if (closeOnTooManyAuthFailures()) return;
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
  const codec::SmtpAddress& a = c.address;
  if (submission_ && a.domain.empty()) {
    refuseRcpt(c.path, "no_domain", "550 5.1.3 " + std::string(c.path) + ": Recipient address needs a domain");
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
    refuseRcpt(c.path, "unknown_user", "550 5.1.1 " + std::string(c.path) + ": Recipient address rejected: User unknown");
    return;
  } else {
    char local[256];
    size_t n = codec::unquoteLocalPart(a.local_part, local, sizeof local);
    if (n == SIZE_MAX) {
      refuseRcpt(c.path, "bad_syntax", "501 5.1.3 Bad recipient address syntax");
      return;
    }
    address.assign(local, n);
    address += '@';
    address += a.domainLower();
    pending_rcpt_.assign(c.path);
  }
  const bool submission = submission_;
  facts_.rcpt = address;
  filters::SessionFacts facts;  // the directory's copy
  if (!submission) facts = directoryFacts();
  rcpt_step_->set([this, rt = rt_, address, submission,
                   facts = std::move(facts)]() -> filters::Resumer::Answer {
    // On the directory executor.
    // Submission: every recipient goes to the relay, which applies its own policy.
    auth::RecipientAnswer answer = submission ? auth::RecipientAnswer{auth::RecipientResult::kLocal, {}}
                                              : rt->directory->lookupRecipient(address, facts);
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
    return [this, r, key = std::move(key), targets = std::move(targets)](filters::SessionFacts&) mutable {
      rcpt_result_ = r;
      rcpt_route_key_ = std::move(key);
      rcpt_targets_ = std::move(targets);
      return filters::Verdict::next();
    };
  });
  rcpt_result_ = auth::RecipientResult::kTempFail;
  rcpt_route_key_.clear();
  rcpt_targets_.clear();
  waitFor(filters::Stage::kRcpt);
}

namespace {
log::RateLimit g_rcpt_log(50);  // a client can send refused recipients at will
}  // namespace

void SmtpSession::logRcptRefused(std::string_view rcpt, std::string_view reason, std::string_view line,
                                 std::string_view detail) {
  if (!g_rcpt_log.allow()) return;
  log::info("smtp recipient refused", {{"session", id_},
                                       {"listener", listener_.name},
                                       {"client", client_ip_},
                                       {"from", mail_from_},
                                       {"to", rcpt},
                                       {"reason", reason},
                                       {"detail", detail},
                                       {"reply", line},
                                       {"suppressed", g_rcpt_log.suppressed()}});
}

void SmtpSession::refuseRcpt(std::string_view rcpt, std::string_view reason, const std::string& line) {
  logRcptRefused(rcpt, reason, line);
  reply(line);
}

void SmtpSession::onRecipientAnswer(auth::RecipientResult result, std::string route_key,
                                    std::vector<DeliveryTarget> targets) {
  std::string path;
  path.swap(pending_rcpt_);
  switch (result) {
    case auth::RecipientResult::kLocal:
      if (targets.empty()) {
        log::warn("smtp no storage node for recipient", {{"session", id_}, {"rcpt", path}});
        refuseRcpt(path, "no_storage_node", "451 4.3.0 " + path + ": no storage node available, try again later");
      } else if (!facts_.rcpts.empty() && route_key != txn_route_) {
        refuseRcpt(path, "other_storage_node",
                   "452 4.5.3 " + path + ": recipient on another storage node, send it in a new transaction");
      } else {
        if (facts_.rcpts.empty()) {
          txn_route_ = std::move(route_key);
          targets_ = std::move(targets);
        }
        facts_.rcpts.push_back(path);
        reply("250 2.1.5 Ok");
      }
      break;
    case auth::RecipientResult::kUnknownMailbox:
      refuseRcpt(path, "unknown_user", "550 5.1.1 " + path + ": Recipient address rejected: User unknown");
      break;
    case auth::RecipientResult::kForeignDomain:
      refuseRcpt(path, "relay_denied", "550 5.7.1 " + path + ": Relay access denied");
      break;
    case auth::RecipientResult::kTempFail:
      refuseRcpt(path, "directory_failure", "451 4.3.0 " + path + ": recipient lookup failed, try again later");
      break;
  }
  resumeClient();
}

void SmtpSession::handleData() {
  if (!in_txn_) {
    badCommand("503 5.5.1 Error: need MAIL command");
    return;
  }
  if (facts_.rcpts.empty()) {
    badCommand("554 5.5.1 Error: no valid recipients");
    return;
  }
  if (bdat_started_) {
    badCommand("503 5.5.1 Error: BDAT in progress");
    return;
  }
  if (input_after_line_ > 0) {
    // RFC 2920 §3.1: DATA ends a pipelined group; a client sends no content before
    // the 354. Bytes already here were written blind: SMTP smuggling, or an engine
    // that does not read replies. What follows cannot be told apart from commands,
    // so, like Postfix's smtpd_forbid_unauth_pipelining, refuse and disconnect
    // (BDAT chunks are pipelined by design and are not affected).
    reactor_.stats.smtp_pipelining_errors++;
    if (g_smuggle_log.allow())
      log::warn("smtp improper command pipelining after DATA",
                {{"session", id_}, {"client", client_ip_}, {"bytes", input_after_line_}});
    resetTransaction();
    reply("554 5.5.0 Error: improper command pipelining after DATA");
    closeAfterFlush("protocol_error");
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
  else if (facts_.rcpts.empty())
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
  if (facts_.rcpts.size() == 1) header += "\r\n\tfor " + facts_.rcpts[0];
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
  if (!spool_->flushAsync([this] {
        if (phase_ == Phase::kSpooling) spoolFlushed();
      })) {  // the spool thread still writes
    phase_ = Phase::kSpooling;
    spool_deadline_ = now() + kSpoolWaitMs;
    pauseClient(true);
    updateTimer();
    return;
  }
  spoolFlushed();
}

void SmtpSession::spoolFlushed() {
  spool_deadline_ = 0;
  if (spool_->failed()) {
    log::error("smtp message not spooled", {{"session", id_}, {"client", client_ip_}, {"error", spool_->error()}});
    reactor_.stats.smtp_deferred++;
    const bool no_space = spool_->noSpace();
    resetTransaction();
    reply(no_space ? "452 4.3.1 Insufficient system storage, try again later"
                   : "451 4.3.0 Error: message not stored, try again later");
    if (phase_ == Phase::kSpooling) {
      phase_ = Phase::kCommand;
      resumeClient();
    }
    return;
  }
  if (spool_->inFile()) reactor_.stats.smtp_spooled_to_file++;
  if (stageWanted(filters::Stage::kData)) {
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

namespace {
// The listener's own SMTP policy, as filters of the session's chain.

// connect: the greeting waits (postscreen's pregreet test). The client's input is
// read meanwhile (SmtpSession::chainHold), and a client that talks before the 220 is
// refused (onClientData).
class GreetingDelay final : public filters::Filter {
 public:
  explicit GreetingDelay(std::chrono::milliseconds delay) : delay_(delay) {}
  std::string_view name() const override { return "greeting-delay"; }
  uint32_t stages() const override { return filters::stageBit(filters::Stage::kConnect); }
  filters::Verdict onStage(filters::Stage, filters::SessionFacts&, const filters::Resumer&) override {
    filters::Verdict v = filters::Verdict::of(filters::Action::kDelay);
    v.delay = delay_;
    return v;
  }

 private:
  std::chrono::milliseconds delay_;
};

// rcpt: at most max_recipients a transaction (RFC 5321 §4.5.3.1.10: 452 4.5.3).
class RecipientLimit final : public filters::Filter {
 public:
  explicit RecipientLimit(size_t max) : max_(max) {}
  std::string_view name() const override { return "recipient-limit"; }
  uint32_t stages() const override { return filters::stageBit(filters::Stage::kRcpt); }
  filters::Verdict onStage(filters::Stage, filters::SessionFacts& f, const filters::Resumer&) override {
    if (f.rcpts.size() < max_) return filters::Verdict::next();
    filters::Verdict v = filters::Verdict::of(filters::Action::kReply, "too many recipients");
    v.code = 452;
    v.enhanced = "4.5.3";
    v.text = "Error: too many recipients";
    return v;
  }

 private:
  size_t max_;
};

// rcpt on the MX: a source route in the local part (% hack, ! path) or an address
// literal asks the gateway to relay.
class RelayCheck final : public filters::Filter {
 public:
  std::string_view name() const override { return "relay-check"; }
  uint32_t stages() const override { return filters::stageBit(filters::Stage::kRcpt); }
  filters::Verdict onStage(filters::Stage, filters::SessionFacts& f, const filters::Resumer&) override {
    const size_t at = f.rcpt.rfind('@');
    const std::string_view local = std::string_view(f.rcpt).substr(0, at == std::string::npos ? 0 : at);
    const bool literal = at != std::string::npos && at + 1 < f.rcpt.size() && f.rcpt[at + 1] == '[';
    if (!literal && local.find_first_of("%!") == std::string_view::npos) return filters::Verdict::next();
    filters::Verdict v = filters::Verdict::of(filters::Action::kReply, "relay attempt");
    v.code = 550;
    v.enhanced = "5.7.1";
    v.text = "Relay access denied";
    return v;
  }
};
}  // namespace

void SmtpSession::chainHold() {
  // Before the greeting on a plaintext listener the client is read, not held: a
  // byte before the 220 marks an early talker. Elsewhere input waits for the stage.
  if (!greeted_ && listener_.tls != conf::TlsMode::kImplicit) {
    pauseClient(false);
    return;
  }
  pauseClient(true);
}

void SmtpSession::addBuiltinFilters(FilterChain& chain) {
  auto greeting_delay = listener_.greeting_delay;
  if (earlyTalkerListener())
    greeting_delay = std::max(greeting_delay, rt_->config->policy.limits.early_talker.greet_wait);
  if (greeting_delay.count() > 0) chain.add(std::make_unique<GreetingDelay>(greeting_delay));
  chain.add(std::make_unique<RecipientLimit>(listener_.max_recipients));
  if (!submission_) chain.add(std::make_unique<RelayCheck>());
  const auto deadline = directoryDeadline();
  auto add = [&](std::string_view what, filters::Stage stage, const char* why) {
    auto step = std::make_unique<ExecutorStep>(std::string(kOwnStepPrefix) + std::string(what),
                                               filters::stageBit(stage), &reactor_.workers(), deadline, why);
    ExecutorStep* p = step.get();
    chain.add(std::move(step));
    return p;
  };
  auth_step_ = add("auth", filters::Stage::kAuth, "directory did not answer in time");
  sender_step_ = add("sender", filters::Stage::kMail, "sender check did not answer in time");
  rcpt_step_ = add("rcpt", filters::Stage::kRcpt, "recipient lookup did not answer in time");
}

void SmtpSession::waitFor(filters::Stage stage) {
  phase_ = Phase::kWaiting;
  pauseClient(true);
  updateTimer();
  runStage(stage);
}

void SmtpSession::refuseStage(filters::Stage stage, const filters::Verdict& v) {
  logRefusal(stage, v);
  const Rendered r = renderSmtp(v, stage, hostname_);
  if (stage == filters::Stage::kRcpt) {  // a limit, the relay check or a policy rule
    // The policy filter names a limit's refusals "limit NAME (...)", a rule's "rule NAME".
    const bool limit = v.filter == "policy" && v.reason.rfind("limit ", 0) == 0;
    const std::string_view reason = v.filter == "recipient-limit" ? "too_many_recipients"
                                    : v.filter == "relay-check"   ? "relay_denied"
                                    : limit                       ? "limit"
                                                                  : "policy";
    // As the other refusals write it: the path, in angle brackets.
    logRcptRefused("<" + facts_.rcpt + ">", reason, r.line, v.filter + ": " + v.reason);
  }
  reply(r.line);
  if (r.close) closeAfterFlush("refused_by_policy");
}

void SmtpSession::runContentHooks() {
  facts_.rcpt.clear();  // the data stage looks at the accepted recipients (facts_.rcpts)
  facts_.scan_results.clear();
  facts_.message = std::make_shared<SpoolBody>(spool_);
  waitFor(filters::Stage::kData);
}

void SmtpSession::onStageDone(filters::Stage stage, filters::Verdict v) {
  if (phase_ != Phase::kWaiting || closing()) return;
  phase_ = Phase::kCommand;
  // A session's own step that did not answer in time (or found its queue full) is
  // that lookup's temporary failure, answered with the lookup's own reply below.
  const bool own_step = v.filter.rfind(kOwnStepPrefix, 0) == 0;
  if (filters::isTerminal(v.action) && !own_step && stage != filters::Stage::kData) {
    // Refused by a policy filter before the command's own work.
    if (stage == filters::Stage::kAuth) user_.clear();
    if (stage == filters::Stage::kHelo) {
      helo_.clear();  // MAIL now needs a HELO that was accepted
      facts_.helo.clear();
    }
    if (stage == filters::Stage::kMail) facts_.from.reset();
    pending_mail_.clear();
    pending_rcpt_.clear();
    refuseStage(stage, v);
    if (!closing()) resumeClient();
    return;
  }
  switch (stage) {
    case filters::Stage::kAuth:
      if (own_step) {
        auth_result_.verdict = auth::Verdict::kTempFail;
        auth_result_.reason = v.reason;
      }
      onAuthAnswer(std::move(auth_result_));
      return;
    case filters::Stage::kMail:
      if (!sender_asked_) {
        acceptMail();
        resumeClient();
        return;
      }
      sender_asked_ = false;
      onSenderAnswer(own_step ? auth::SenderResult::kTempFail : sender_result_);
      return;
    case filters::Stage::kRcpt:
      onRecipientAnswer(own_step ? auth::RecipientResult::kTempFail : rcpt_result_, std::move(rcpt_route_key_),
                        std::move(rcpt_targets_));
      return;
    case filters::Stage::kData:
      break;
    case filters::Stage::kHelo:
      sendHeloReply();
      resumeClient();
      return;
    case filters::Stage::kConnect:
    case filters::Stage::kClose:
      resumeClient();
      return;
  }
  if (v.action == filters::Action::kQuarantine) {
    quarantineMessage(std::move(v));  // uses facts_.message (the chain's replacement, if any)
    return;
  }
  facts_.message.reset();
  if (!filters::isTerminal(v.action)) {
    for (const std::string& h : takeAddedHeaders()) {
      added_headers_ += h;
      added_headers_ += "\r\n";
    }
    if (auto body = takeReplacement()) {
      // Its chunks are read on the spool thread, as the spool file's are.
      Reactor* r = &reactor_;
      const uint32_t slot = this->slot(), gen = this->gen();
      replacement_ = std::make_shared<ReplacementBody>(
          std::move(body), ReplacementBody::Async{[r](std::function<void()> job) { return r->spoolIo().submit(std::move(job)); },
                                                  [r, slot, gen](std::function<void()> fn) {
                                                    r->postToSession(slot, gen, [fn = std::move(fn)](Session&) { fn(); });
                                                  }});
    }
    startDelivery();
    return;
  }
  if (v.action == filters::Action::kReply && v.code == 250) {
    // Accepted and dropped (a milter's DISCARD): 250, and the node never sees it.
    log::info("smtp message discarded", {{"session", id_},
                                         {"client", client_ip_},
                                         {"from", mail_from_},
                                         {"recipients", facts_.rcpts.size()},
                                         {"filter", v.filter},
                                         {"reason", v.reason},
                                         {"ref", v.ref}});
    resetTransaction();
    reply("250 2.0.0 Ok (ref " + v.ref + ")");
    resumeClient();
    return;
  }
  logRefusal(stage, v);
  const Rendered r = renderSmtp(v, stage, hostname_);
  if (r.line[0] == '5')
    reactor_.stats.smtp_rejected++;
  else
    reactor_.stats.smtp_deferred++;
  resetTransaction();
  phase_ = Phase::kCommand;
  reply(r.line);
  if (r.close) {
    closeAfterFlush("refused_by_policy");
    return;
  }
  resumeClient();
}

// ------------------------------------------------------------------ quarantine

namespace {
// The message as the node would get it: the header fields the filters added, then
// the spool (or the replacement a filter made).
class PrefixedBody final : public filters::MessageBody {
 public:
  PrefixedBody(std::string prefix, std::shared_ptr<const filters::MessageBody> body)
      : prefix_(std::move(prefix)), body_(std::move(body)) {}
  uint64_t size() const override { return prefix_.size() + body_->size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    if (off >= prefix_.size()) return body_->read(off - prefix_.size(), n, out);
    out->assign(prefix_, static_cast<size_t>(off), n);
    return true;
  }

 private:
  std::string prefix_;
  std::shared_ptr<const filters::MessageBody> body_;
};

log::RateLimit g_quarantine_log(20);
log::RateLimit g_queue_log(20);
}  // namespace

void SmtpSession::quarantineMessage(filters::Verdict v) {
  std::shared_ptr<const filters::MessageBody> message = std::move(facts_.message);
  if (!message) message = std::make_shared<SpoolBody>(spool_);
  std::string headers;
  for (const std::string& h : takeAddedHeaders()) headers += h + "\r\n";
  auto body =
      headers.empty() ? message : std::make_shared<PrefixedBody>(std::move(headers), std::move(message));
  std::shared_ptr<filters::QuarantineStore> store = rt_->quarantine;
  if (!store) {  // a scanner's verdict (milter, DLP) without hooks.quarantine
    quarantineDone(v, Error{"no quarantine store configured"}, body->size());
    return;
  }
  filters::QuarantineEntry e;
  e.reason = v.reason;
  e.filter = v.filter;
  e.ref = v.ref;
  e.mail_from = mail_from_;
  e.rcpts = facts_.rcpts;
  e.client_ip = client_ip_;
  e.helo = helo_;
  e.user = user_;
  e.listener = listener_.name;
  e.session_id = id_;
  e.smtputf8 = smtputf8_;
  e.body_8bit = body_8bit_;
  phase_ = Phase::kDelivering;
  pauseClient(true);
  updateTimer();
  Reactor* reactor = &reactor_;
  const uint32_t slot = this->slot(), gen = this->gen();
  // On the content executor: the put blocks until the entry is durable. The spool
  // stays alive with the job if the client goes meanwhile.
  auto job = [reactor, slot, gen, store, body, e = std::move(e), v]() mutable {
    Result<std::string> id = store->put(std::move(e), *body);
    const uint64_t size = body->size();
    reactor->postToSession(slot, gen, [v = std::move(v), id = std::move(id), size](Session& s) {
      static_cast<SmtpSession&>(s).quarantineDone(v, id, size);
    });
  };
  // No queueing deadline: a job dropped unrun would leave the client without a reply.
  if (!reactor_.contentWorkers().submit(std::move(job), std::chrono::milliseconds(0)))
    quarantineDone(v, Error{"content executor queue full"}, body->size());
}

void SmtpSession::quarantineDone(const filters::Verdict& v, const Result<std::string>& id, uint64_t size) {
  if (closing()) return;
  if (!id) {
    filters::quarantineStats().failures.fetch_add(1);
    if (g_quarantine_log.allow())
      log::error("smtp message not quarantined", {{"session", id_},
                                                  {"client", client_ip_},
                                                  {"filter", v.filter},
                                                  {"ref", v.ref},
                                                  {"error", id.error()}});
    endTransaction("451 4.3.0 Error: message not stored, try again later");
    return;
  }
  filters::quarantineStats().stored.fetch_add(1);
  log::info("smtp message quarantined", {{"session", id_},
                                         {"client", client_ip_},
                                         {"id", id.value()},
                                         {"reason", v.reason},
                                         {"filter", v.filter},
                                         {"ref", v.ref},
                                         {"size", size},
                                         {"from", mail_from_},
                                         {"recipients", facts_.rcpts.size()}});
  endTransaction("250 2.0.0 Ok: queued as " + id.value() + " (quarantined)");
}

// ------------------------------------------------------------------ delivery

void SmtpSession::startDelivery() {
  phase_ = Phase::kDelivering;
  pauseClient(true);
  updateTimer();
  delivery_queue_id_ = id_ + "-" + std::to_string(messages_);
  delivery_message_id_ = std::string(codec::headerField(spool_->head(), "Message-ID", 998));
  // Only while the queue holds something (as the runner last counted, or this
  // process added since) is a message looked up there: no cost in the normal path.
  if (rt_->queue && !delivery_message_id_.empty() && queue::queueStats().entries.load() > 0) {
    checkQueuedCopies();
    return;
  }
  deliverToNodes();
}

void SmtpSession::deliverToNodes() {
  if (queueFull()) {
    // A node might defer a recipient after the data and the queue would have no
    // room: refused before any node takes it (no copy, no duplicate on the retry).
    queue::queueStats().put_full.fetch_add(1);
    if (g_queue_log.allow())
      log::warn("smtp message refused: the exception queue is full",
                {{"session", id_}, {"client", client_ip_}, {"from", mail_from_}, {"entries", queue::queueStats().entries.load()}});
    endTransaction("451 4.3.1 Error: queue full, try again later");
    return;
  }
  NodeTransaction t;
  t.client_ip = client_ip_;
  t.client_port = client_port_;
  t.helo = helo_;
  t.esmtp = esmtp_;
  t.user = user_;
  t.mail_from = mail_from_;
  t.rcpts = facts_.rcpts;
  t.smtputf8 = smtputf8_;
  t.body_8bit = body_8bit_;
  t.queue_id = delivery_queue_id_;
  t.listener = listener_.name;
  t.message_id = delivery_message_id_;
  t.headers.swap(added_headers_);
  added_headers_.clear();
  // One header with every scanner's outcome (filters/scan_result.h), when any ran.
  if (std::string scan = filters::formatScanHeader(facts_); !scan.empty()) t.headers += scan + "\r\n";
  facts_.scan_results.clear();
  t.body = deliverableBody();
  t.targets = targets_;
  // The queue's deliveries speak plain LMTP/SMTP: a node behind TLS keeps the
  // all-or-451 answer (nothing is queued that the runner could not deliver).
  t.queue_partial = rt_->queue != nullptr &&
                    std::none_of(t.targets.begin(), t.targets.end(), [](const DeliveryTarget& d) {
                      return d.backend && d.backend->tls != conf::TlsMode::kNone;
                    });
  delivery_headers_ = t.headers;
  node_client_.deliver(std::move(t));
}

// ------------------------------------------------------------------ exception queue

bool SmtpSession::queueFull() {
  if (!rt_->queue) return false;
  const conf::QueueConfig& q = rt_->config->queue;
  const queue::QueueStats& st = queue::queueStats();
  return st.entries.load() >= q.max_entries || st.bytes.load() + deliverableBody()->size() > q.max_size;
}

void SmtpSession::checkQueuedCopies() {
  std::shared_ptr<queue::QueueStore> store = rt_->queue;
  Reactor* reactor = &reactor_;
  const uint32_t slot = this->slot(), gen = this->gen();
  auto job = [reactor, slot, gen, store, mid = delivery_message_id_, from = mail_from_] {
    auto found = store->findByMessage(mid, from);
    reactor->postToSession(slot, gen, [found = std::move(found)](Session& s) {
      static_cast<SmtpSession&>(s).onQueuedCopies(found);
    });
  };
  if (!reactor_.contentWorkers().submit(std::move(job), std::chrono::milliseconds(0)))
    onQueuedCopies(Error{"content executor queue full"});
}

void SmtpSession::onQueuedCopies(const Result<std::vector<queue::QueueEntry>>& found) {
  if (closing() || phase_ != Phase::kDelivering) return;
  if (!found) {
    // Delivered as if new: at worst a second copy, never a loss.
    if (g_queue_log.allow())
      log::warn("smtp queue lookup failed", {{"session", id_}, {"queue_id", delivery_queue_id_}, {"error", found.error()}});
    deliverToNodes();
    return;
  }
  std::string earlier;
  std::vector<std::string> rest;
  for (const std::string& rcpt : facts_.rcpts) {
    const std::string addr = recipientAddress(rcpt);
    const queue::QueueEntry* held = nullptr;
    // Held: the queue delivered it or still will (a failed one may be sent again).
    for (const auto& e : found.value())
      for (const auto& r : e.rcpts)
        if ((r.state == queue::RcptState::kPending || r.state == queue::RcptState::kDelivered) &&
            recipientAddress(r.addr) == addr)
          held = &e;
    if (!held) {
      rest.push_back(rcpt);
      continue;
    }
    earlier = held->id;
    queue::queueStats().duplicates.fetch_add(1);
    log::info("smtp recipient", {{"session", id_},
                                 {"listener", listener_.name},
                                 {"client", client_ip_},
                                 {"queue_id", delivery_queue_id_},
                                 {"message_id", delivery_message_id_},
                                 {"from", mail_from_},
                                 {"to", rcpt},
                                 {"status", "duplicate"},
                                 {"queued_as", held->id},
                                 {"outcome", "duplicate"}});
  }
  if (rest.empty()) {
    log::info("smtp message already queued", {{"session", id_},
                                              {"client", client_ip_},
                                              {"from", mail_from_},
                                              {"message_id", delivery_message_id_},
                                              {"queued_as", earlier}});
    endTransaction("250 2.0.0 Ok: already queued as " + earlier);
    return;
  }
  facts_.rcpts = std::move(rest);
  deliverToNodes();
}

void SmtpSession::queueRest() {
  const std::vector<std::string>& replies = node_client_.recipientReplies();
  const int64_t now = filters::wallMs();
  queue::QueueEntry e;
  e.id = delivery_queue_id_;
  e.created_ms = now;
  bool pending = false;
  queued_rcpts_.clear();
  for (size_t i = 0; i < facts_.rcpts.size(); ++i) {
    queue::QueueRcpt r;
    r.addr = facts_.rcpts[i];
    r.reply = i < replies.size() ? replies[i] : std::string();
    r.updated_ms = now;
    const char cls = r.reply.empty() ? '4' : r.reply[0];
    r.state = cls == '2' ? queue::RcptState::kDelivered : cls == '5' ? queue::RcptState::kFailed : queue::RcptState::kPending;
    pending = pending || r.state == queue::RcptState::kPending;
    queued_rcpts_.push_back(std::move(r));
  }
  e.rcpts = queued_rcpts_;
  // The open recipients wait for the first retry; failed ones' DSN goes out at once.
  e.next_ms = pending ? now + rt_->config->queue.retry.count() : now;
  e.mail_from = mail_from_;
  e.client_ip = client_ip_;
  e.helo = helo_;
  e.user = user_;
  e.listener = listener_.name;
  e.session_id = id_;
  e.message_id = delivery_message_id_;
  e.smtputf8 = smtputf8_;
  e.body_8bit = body_8bit_;
  std::shared_ptr<const filters::MessageBody> message;
  if (replacement_)
    message = replacement_->source();
  else
    message = std::make_shared<SpoolBody>(spool_);
  auto body = delivery_headers_.empty()
                  ? message
                  : std::make_shared<PrefixedBody>(delivery_headers_, std::move(message));
  std::shared_ptr<queue::QueueStore> store = rt_->queue;
  Reactor* reactor = &reactor_;
  const uint32_t slot = this->slot(), gen = this->gen();
  // On the content executor: put() returns once the entry is durable.
  auto job = [reactor, slot, gen, store, body, e = std::move(e)]() mutable {
    std::string error;
    const queue::QueueStore::Put put = store->put(std::move(e), *body, &error);
    const uint64_t size = body->size();
    reactor->postToSession(slot, gen, [put, error = std::move(error), size](Session& s) {
      static_cast<SmtpSession&>(s).queueDone(put, error, size);
    });
  };
  if (!reactor_.contentWorkers().submit(std::move(job), std::chrono::milliseconds(0)))
    queueDone(queue::QueueStore::Put::kError, "content executor queue full", body->size());
}

void SmtpSession::queueDone(queue::QueueStore::Put put, const std::string& error, uint64_t size) {
  if (closing()) return;
  const bool stored = put == queue::QueueStore::Put::kStored;
  const std::string client_reply =
      stored ? "250 2.0.0 Ok: queued as " + delivery_queue_id_
      : put == queue::QueueStore::Put::kFull
          ? std::string("451 4.3.1 Error: delivery incomplete and the queue is full, try again later")
          : std::string("451 4.3.0 Error: delivery incomplete and the message could not be queued, try again later");
  size_t delivered = 0, queued = 0, failed = 0;
  for (const auto& r : queued_rcpts_) {
    const char* status = "deferred";
    switch (r.state) {
      case queue::RcptState::kDelivered:
        status = "delivered";
        delivered++;
        break;
      case queue::RcptState::kPending:
        status = stored ? "queued" : "deferred";
        queued++;
        break;
      case queue::RcptState::kFailed:
      case queue::RcptState::kReported:
        status = stored ? "failed" : "deferred";
        failed++;
        break;
    }
    log::info("smtp recipient", {{"session", id_},
                                 {"listener", listener_.name},
                                 {"client", client_ip_},
                                 {"queue_id", delivery_queue_id_},
                                 {"message_id", delivery_message_id_},
                                 {"from", mail_from_},
                                 {"to", r.addr},
                                 {"status", status},
                                 {"backend", node_client_.attemptBackend()},
                                 {"node_reply", std::string_view(r.reply).substr(0, SmtpNodeClient::kLoggedReply)},
                                 {"size", size},
                                 {"reply", client_reply},
                                 {"outcome", stored ? "queued" : "partial"}});
  }
  if (stored) {
    queue::queueStats().queued.fetch_add(1);
    queue::queueStats().entries.fetch_add(1);
    queue::queueStats().bytes.fetch_add(size);
    log::info("smtp message queued", {{"session", id_},
                                      {"client", client_ip_},
                                      {"queue_id", delivery_queue_id_},
                                      {"from", mail_from_},
                                      {"delivered", delivered},
                                      {"queued", queued},
                                      {"failed", failed},
                                      {"size", size},
                                      {"store", rt_->queue->kind()}});
  } else {
    (put == queue::QueueStore::Put::kFull ? queue::queueStats().put_full : queue::queueStats().put_failed)
        .fetch_add(1);
    log::error("smtp message not queued: the client retries, and the recipients a node accepted may get it twice",
               {{"session", id_},
                {"client", client_ip_},
                {"queue_id", delivery_queue_id_},
                {"delivered", delivered},
                {"error", put == queue::QueueStore::Put::kFull ? std::string("queue full") : error}});
  }
  endTransaction(client_reply);
}

void SmtpSession::onBackendConnected() { node_client_.onConnected(); }
void SmtpSession::onBackendTlsReady() { node_client_.onTlsReady(); }
void SmtpSession::onBackendData(std::string_view data) { node_client_.onData(data); }
void SmtpSession::onBackendDrained() { node_client_.onDrained(); }
void SmtpSession::onBackendFailed(BackendFailure why, const std::string& detail) {
  node_client_.onFailed(why, detail);
}

void SmtpSession::NodeLink::connect(const DeliveryTarget& target) {
  s_.connectBackend(target.addr, target.backend->connect_timeout);
}
void SmtpSession::NodeLink::send(std::string_view bytes) { s_.writeBackend(bytes); }
bool SmtpSession::NodeLink::startTls(const std::string& name) { return s_.startBackendTls(name); }
void SmtpSession::NodeLink::drop() { s_.dropBackend(); }
void SmtpSession::NodeLink::armTimer(uint64_t ms) {
  s_.node_deadline_ = ms ? s_.now() + ms : 0;
  s_.updateTimer();
}
bool SmtpSession::NodeLink::closed() const { return s_.closing(); }
void SmtpSession::NodeLink::onDeliveryDone(std::string_view client_reply, const char* outcome) {
  s_.deliveryDone(client_reply, outcome);
}
// The client gets one reply for the whole transaction; the node client logs which
// recipients the node refused.
void SmtpSession::NodeLink::onRecipientResult(size_t, const codec::SmtpReply&) {}
void SmtpSession::NodeLink::onTargetChosen(const DeliveryTarget& target) {
  s_.backend_name_ = target.backend->name;
  BackendStats* bs = backendStats(target.backend->name);
  bs->add(bs->attempts);
}
void SmtpSession::NodeLink::onAttemptFailed(BackendFailure why, const std::string&) {
  s_.reactor_.stats.backend_failures++;
  if (!s_.backend_name_.empty()) backendStats(s_.backend_name_)->failed(why);
}

void SmtpSession::deliveryDone(std::string_view client_reply, const char* outcome) {
  if (rt_->queue && std::string_view(outcome) == "partial") {
    queueRest();  // the client's reply waits for the queue's durable write
    return;
  }
  if (std::string_view(outcome) != "delivered")
    log::info("smtp message not accepted", {{"session", id_},
                                            {"client", client_ip_},
                                            {"from", mail_from_},
                                            {"recipients", facts_.rcpts.size()},
                                            {"outcome", outcome},
                                            {"reply", client_reply}});
  endTransaction(client_reply);
}

void SmtpSession::endTransaction(std::string_view client_reply) {
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
