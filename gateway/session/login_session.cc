#include "gateway/session/login_session.h"

#include <algorithm>

#include "auth/sasl.h"
#include "filters/policy/policy.h"
#include "filters/policy/policy_state.h"
#include "gateway/core/log.h"
#include "gateway/session/executor_step.h"
#include "gateway/session/reactor.h"

namespace mailgate::session {

void LoginSession::armPreauthTimer() {
  preauth_at_ = now() + static_cast<uint64_t>(listener_.preauth_timeout.count());
  armIdleTimer();
}

void LoginSession::armIdleTimer() {
  uint64_t at = preauth_at_;
  const auto lt = static_cast<uint64_t>(rt_->config->policy.limits.line_timeout.count());
  if (line_started_ && lt > 0 && line_started_ + lt < at) at = line_started_ + lt;
  setTimer(at);
}

void LoginSession::lineTimedOut() {
  filters::policy::policyState().stats.line_timeouts++;
  static log::RateLimit rl(20);  // a client can trigger this at will
  if (rl.allow())
    log::info("command line timeout", {{"session", id_},
                                       {"client", client_ip_},
                                       {"listener", listener_.name},
                                       {"suppressed", rl.suppressed()}});
  writeClient(preLoginRules().line_timeout_reply);
  closeAfterFlush("line_timeout");
}

void LoginSession::addBuiltinFilters(FilterChain& chain) {
  auto step = std::make_unique<ExecutorStep>("directory", filters::stageBit(filters::Stage::kAuth), &reactor_.workers(),
                                             directoryDeadline(), "directory did not answer in time");
  directory_step_ = step.get();
  chain.add(std::move(step));
}

void LoginSession::beginLogin(std::string user, std::string password) {
  user_ = std::move(user);
  password_ = std::move(password);
  backend_user_.reset();
  backend_password_.reset();
  phase_ = LoginPhase::kDirectory;
  clearTimer();
  pauseClient(true);
  facts_.user = user_;
  facts_.attempt = auth_failures_ + 1;
  lookup_.answered = false;
  directory_step_->set([this, rt = rt_, proto = listener_.protocol, u = user_, p = password_,
                        facts = directoryFacts()]() mutable -> filters::Resumer::Answer {
    // On the directory executor.
    facts.route_map = rt->router->mapChangedAt();  // a cached route hint older than the map is not used
    auth::AuthResult r = rt->directory->authenticate(u, p, facts);
    p.assign(p.size(), '\0');
    std::vector<Candidate> cands;
    if (r.verdict == auth::Verdict::kOk) {
      routing::Route route = r.route ? rt->router->resolve(r.route->primary, r.route->secondary)
                                     : rt->router->route(r.user.empty() ? u : r.user);
      cands = routeCandidates(route, [proto](const conf::BackendConfig& bc) {
        return proto == conf::Protocol::kImap ? bc.ports.imap : bc.ports.pop3;
      });
    }
    // On the session's reactor, while this login is its current step.
    return [this, r = std::move(r), cands = std::move(cands)](filters::SessionFacts& f) mutable {
      if (r.verdict == auth::Verdict::kOk) {
        f.authenticated = true;
        if (!r.user.empty()) f.user = r.user;
      }
      lookup_.result = std::move(r);
      lookup_.candidates = std::move(cands);
      lookup_.answered = true;
      return filters::Verdict::next();
    };
  });
  runStage(filters::Stage::kAuth);
}

void LoginSession::onStageDone(filters::Stage stage, filters::Verdict v) {
  if (stage != filters::Stage::kAuth || phase_ != LoginPhase::kDirectory) return;
  if (!filters::isTerminal(v.action)) {
    if (!lookup_.answered) {
      fail(false, "directory gave no answer");
      return;
    }
    onDirectoryAnswer(std::move(lookup_.result), std::move(lookup_.candidates));
    return;
  }
  if (v.filter == "directory") {  // its deadline passed, or its queue was full
    fail(false, v.reason);
    return;
  }
  // Refused by policy before the directory was asked.
  logRefusal(stage, v);
  refuseLogin(v);
}

void LoginSession::refuseLogin(const filters::Verdict& v) {
  const Rendered r = renderRefusal(v, filters::Stage::kAuth);
  writeClient(r.line + "\r\n");
  password_.clear();
  if (r.close) {
    closeAfterFlush("refused_by_policy");
    return;
  }
  phase_ = LoginPhase::kIdle;
  reactor_.stats.temp_failures++;
  backToPreLogin();
}

void LoginSession::backToPreLogin() {
  line_started_ = 0;  // the held input is parsed again: its partial line starts now
  armPreauthTimer();
  pauseClient(false);
  resumeClientInput();
}

void LoginSession::onDirectoryAnswer(auth::AuthResult result, std::vector<Candidate> candidates) {
  if (phase_ != LoginPhase::kDirectory) return;
  switch (result.verdict) {
    case auth::Verdict::kOk:
      if (!result.user.empty()) user_ = result.user;
      facts_.user = user_;
      if (const filters::Verdict pv = notifyEvent(filters::EventKind::kAuthSuccess);
          filters::isTerminal(pv.action)) {  // the per-user session limit
        facts_.authenticated = false;
        refuseLogin(pv);
        return;
      }
      backend_user_ = std::move(result.backend_user);
      backend_password_ = std::move(result.backend_password);
      candidates_ = std::move(candidates);
      next_candidate_ = 0;
      if (candidates_.empty()) {
        fail(false, "no route for user");
        return;
      }
      phase_ = LoginPhase::kBackend;
      tryNextCandidate();
      return;
    case auth::Verdict::kBadPassword:
      extra_wait_ = result.wait;
      fail(true, result.reason.empty() ? "bad password" : result.reason);
      return;
    case auth::Verdict::kUnknownUser:
      extra_wait_ = result.wait;
      fail(true, result.reason.empty() ? "unknown user" : result.reason);
      return;
    case auth::Verdict::kTempFail:
      fail(false,
           result.reason.empty() ? "directory unavailable" : "directory unavailable: " + result.reason);
      return;
  }
}

void LoginSession::tryNextCandidate() {
  while (next_candidate_ < candidates_.size()) {
    const Candidate& c = candidates_[next_candidate_++];
    attempt_++;
    bline_.clear();
    current_ = c.backend;
    backend_name_ = c.backend->name;
    if (!c.error.empty()) {
      log::warn("backend unresolvable", {{"session", id_}, {"backend", c.backend->name}, {"error", c.error}});
      continue;
    }
    // The whole handshake (connect, greeting, TLS, login) is bounded.
    setTimer(now() + 2 * static_cast<uint64_t>(c.backend->connect_timeout.count()));
    BackendStats* bs = backendStats(c.backend->name);
    bs->add(bs->attempts);
    connectBackend(c.addr, c.backend->connect_timeout);
    return;
  }
  fail(false, "all backends unavailable");
}

void LoginSession::onBackendData(std::string_view data) {
  constexpr size_t kMaxBackendLine = 64 * 1024;
  const unsigned attempt = attempt_;
  while (!data.empty()) {
    if (phase_ != LoginPhase::kBackend || attempt != attempt_) return;
    size_t nl = data.find('\n');
    if (nl == std::string_view::npos) {
      bline_.append(data);
      if (bline_.size() > kMaxBackendLine)
        backendAttemptFailed(BackendFailure::kProtocol, "backend line too long");
      return;
    }
    bline_.append(data.substr(0, nl + 1));
    data.remove_prefix(nl + 1);
    std::string line;
    line.swap(bline_);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    handleBackendLine(line);
    if (relaying()) {
      // Anything the node sent after its reply to the login belongs to the client.
      if (!data.empty()) onRelayData(Side::kBackend, data);
      return;
    }
  }
}

void LoginSession::onBackendConnected() {
  if (current_ && current_->tls == conf::TlsMode::kImplicit) {
    if (!startBackendTls(current_->name)) backendAttemptFailed(BackendFailure::kTls, "cannot start TLS");
    return;  // onBackendTlsReady continues
  }
  beginBackendHandshake();
}

void LoginSession::onBackendTlsReady() {
  if (current_ && current_->tls == conf::TlsMode::kImplicit) beginBackendHandshake();
}

void LoginSession::onBackendFailed(BackendFailure why, const std::string& detail) {
  backendAttemptFailed(why, detail);
}

void LoginSession::backendAttemptFailed(BackendFailure why, const std::string& detail) {
  if (phase_ != LoginPhase::kBackend) return;
  static log::RateLimit rl(20);  // a client can trigger this (the node refusing its password)
  if (rl.allow())
    log::warn("backend attempt failed", {{"session", id_},
                                         {"backend", current_ ? current_->name : ""},
                                         {"class", failureName(why)},
                                         {"detail", detail},
                                         {"suppressed", rl.suppressed()}});
  dropBackend();
  reactor_.stats.backend_failures++;
  if (current_) backendStats(current_->name)->failed(why);
  switch (why) {
    case BackendFailure::kAuthRejected:
      fail(true, "backend rejected login");
      return;
    case BackendFailure::kConnect:
    case BackendFailure::kSend:
    case BackendFailure::kTimeout:
    case BackendFailure::kProtocol:
    case BackendFailure::kTls:
    case BackendFailure::kTempRefusal:
    case BackendFailure::kInternal:
      tryNextCandidate();
      return;
  }
}

void LoginSession::backendLoginRejected(const std::string& detail) {
  backendAttemptFailed(BackendFailure::kAuthRejected, detail);
}

void LoginSession::loginSucceeded(std::string_view to_client) {
  std::string to_backend;  // what the client sent meanwhile, unparsed
  to_backend.swap(held_);
  phase_ = LoginPhase::kRelay;
  password_.assign(password_.size(), '\0');
  password_.clear();
  password_.shrink_to_fit();
  backend_password_.reset();
  reactor_.stats.logins++;
  if (!relay_stats_ && !backend_name_.empty()) {
    relay_stats_ = backendStats(backend_name_);
    relay_stats_->add(relay_stats_->logins);
    relay_stats_->active.fetch_add(1, std::memory_order_relaxed);
  }
  log::info("login", {{"session", id_},
                      {"listener", listener_.name},
                      {"user", user_},
                      {"backend", backend_name_},
                      {"client", client_ip_},
                      {"client_port", client_port_}});
  startRelay(to_client, to_backend);
}

void LoginSession::fail(bool auth_failure, const std::string& why) {
  dropBackend();
  if (authLogLimit().allow())
    log::info(auth_failure ? "authentication failed" : "login temporarily failed",
              {{"session", id_}, {"user", user_}, {"client", client_ip_}, {"reason", why}});
  const uint64_t credential = auth_failure ? filters::policy::credentialHash(user_, password_) : 0;
  password_.clear();
  if (auth_failure) {
    reactor_.stats.auth_failures++;
    auth_failures_++;
    const filters::Verdict pv = notifyEvent(filters::EventKind::kAuthFailure, credential);
    if (filters::isTerminal(pv.action)) {  // banned, or over an auth-failure limit that refuses
      filters::Verdict bye = pv;
      bye.action = filters::Action::kClose;
      writeClient(renderRefusal(bye, filters::Stage::kAuth).line + "\r\n");
      closeAfterFlush("refused_by_policy");
      return;
    }
    phase_ = LoginPhase::kDelay;
    // The directory's own wait (auth_http Auth-Wait) replaces the configured delay;
    // the policy's tarpit lengthens either.
    auto delay = extra_wait_.count() > 0 ? extra_wait_ : rt_->config->directory.file.failure_delay;
    if (pv.action == filters::Action::kDelay) delay = std::max(delay, pv.delay);
    extra_wait_ = std::chrono::milliseconds(0);
    setTimer(now() + static_cast<uint64_t>(delay.count()));
    return;
  }
  phase_ = LoginPhase::kIdle;
  backend_name_.clear();
  reactor_.stats.temp_failures++;
  auth_failures_++;  // counted too (as Dovecot does): no endless loop on temporary failures
  replyTempFail(why);
  if (closing()) return;
  backToPreLogin();
}

void LoginSession::start() {
  armPreauthTimer();
  if (listener_.tls == conf::TlsMode::kImplicit) {
    if (!startClientTls()) {
      close("tls_unavailable");
      return;
    }
    tls_pending_ = true;  // the greeting follows the handshake
    pauseClient(false);
    return;
  }
  sendGreeting();
  pauseClient(false);
}

void LoginSession::onClientTlsReady() {
  tls_pending_ = false;
  facts_.secured = true;
  facts_.tls_version = clientTlsVersion();
  armPreauthTimer();
  if (listener_.tls == conf::TlsMode::kImplicit) sendGreeting();
}

void LoginSession::startClientTlsAfterReply() {
  if (!startClientTls()) {
    closeAfterFlush("tls_unavailable");
    return;
  }
  tls_pending_ = true;
}

void LoginSession::onClientData(std::string_view data) {
  if (tls_pending_) return;  // cannot happen: TLS bytes go to the TLS layer
  if (phase_ != LoginPhase::kIdle) {
    holdInput(data);
    return;
  }
  armPreauthTimer();
  while (!data.empty() && !closing()) {
    const Parsed r = feedParser(data);
    data.remove_prefix(r.consumed);
    switch (r.what) {
      case ClientInput::kNeedMore:
        if (r.consumed == 0) data = {};
        break;
      case ClientInput::kAnswered:
        break;
      case ClientInput::kSaslLine:
        line_started_ = 0;
        saslRespond(r.sasl_line);
        break;
      case ClientInput::kCommand:
        line_started_ = 0;
        handleCommand();
        break;
      case ClientInput::kError:
        line_started_ = 0;
        sasl_.reset();
        replyBadInput();
        break;
      case ClientInput::kFatal:
        replyFatalInput();
        closeAfterFlush("protocol_error");
        return;
    }
    if (tls_pending_) {
      // Everything after STARTTLS/STLS in the same read is an injection attempt: drop it.
      const bool pending = resetParser();
      const PreLoginRules& rules = preLoginRules();
      if ((!data.empty() || pending) && rules.tls_discard_limit->allow()) {
        log::warn(rules.tls_discard_log, {{"session", id_},
                                          {"client", client_ip_},
                                          {"bytes", data.size()},
                                          {"suppressed", rules.tls_discard_limit->suppressed()}});
      }
      return;
    }
    if (phase_ != LoginPhase::kIdle) {
      holdInput(data);
      return;
    }
  }
  if (closing()) return;
  // A started line must end within limits.line_timeout of its first byte, however
  // slowly its bytes trickle in (each read pushes the preauth deadline back).
  if (!lineStarted())
    line_started_ = 0;
  else if (line_started_ == 0)
    line_started_ = now();
  armIdleTimer();
}

void LoginSession::resumeClientInput() {
  if (held_.empty()) return;
  std::string h;
  h.swap(held_);
  onClientData(h);
}

void LoginSession::holdInput(std::string_view data) {
  const PreLoginRules& rules = preLoginRules();
  if (held_.size() + data.size() <= rules.max_held) {
    held_.append(data);
    return;
  }
  static log::RateLimit rl(20);  // a client can trigger this at will
  if (rl.allow())
    log::info("too much input during login", {{"session", id_},
                                              {"client", client_ip_},
                                              {"held", held_.size()},
                                              {"bytes", data.size()},
                                              {"suppressed", rl.suppressed()}});
  held_.clear();
  writeClient(rules.held_refusal);
  closeAfterFlush("protocol_error");
}

void LoginSession::onTimer() {
  switch (phase_) {
    case LoginPhase::kDelay:
      phase_ = LoginPhase::kIdle;
      backend_name_.clear();
      replyAuthFailed();
      if (closing()) return;
      backToPreLogin();
      return;
    case LoginPhase::kBackend:
      backendAttemptFailed(BackendFailure::kTimeout, "backend handshake timeout");
      return;
    case LoginPhase::kDirectory:
      return;  // the auth stage's deadline bounds the lookup
    case LoginPhase::kIdle: {
      const auto lt = static_cast<uint64_t>(rt_->config->policy.limits.line_timeout.count());
      if (line_started_ && lt > 0 && now() >= line_started_ + lt) {
        lineTimedOut();
        return;
      }
      if (now() >= preauth_at_) {
        onPreauthTimeout();
        return;
      }
      armIdleTimer();
      return;
    }
    case LoginPhase::kRelay:
      return;
  }
}

void LoginSession::sendSaslChallenge(std::string_view challenge) {
  expectSaslLine();
  writeClient("+ " + std::string(challenge) + "\r\n");
}

void LoginSession::saslRespond(std::string_view line) {
  const SaslExchange::Step step = sasl_.respond(line);
  switch (step) {
    case SaslExchange::Step::kChallenge:
      sendSaslChallenge(sasl_.challenge());
      return;
    case SaslExchange::Step::kDone:
      beginLogin(std::move(sasl_.user()), std::move(sasl_.password()));
      sasl_.reset();
      return;
    case SaslExchange::Step::kCancelled:
    case SaslExchange::Step::kMalformed:
    case SaslExchange::Step::kRejected:
      replySaslRefused(step);
      return;
  }
}

bool LoginSession::masterLogin() const {
  return current_ && current_->login == "master" && !backend_user_ && !backend_password_;
}

std::string LoginSession::backendPlainResponse() const {
  if (!masterLogin()) return auth::encodePlain("", loginUser(), password());
  auto it = rt_->master_passwords.find(current_->name);
  return auth::encodePlain(loginUser(), current_->master_user,
                           it != rt_->master_passwords.end() ? it->second : std::string());
}

}  // namespace mailgate::session
