#include "gateway/session/imap_session.h"

#include "filters/policy/policy_state.h"
#include "gateway/core/ascii.h"
#include "gateway/core/log.h"
#include "gateway/session/reactor.h"

namespace mailgate::session {

namespace {
log::RateLimit g_proto_log(20);
log::RateLimit g_starttls_log(20);  // a client can trigger this at will
const PreLoginRules kPreLogin{64 * 1024, "* BYE Too much data before login completed.\r\n",
                              "pipelined data after STARTTLS discarded", &g_starttls_log,
                              "* BYE [LIMIT] Command line timeout.\r\n"};

codec::ImapLimits limitsFor(const conf::ListenerConfig& l) {
  codec::ImapLimits lim;
  lim.max_line = l.max_line ? l.max_line : 65536;
  lim.max_literal = l.max_literal;
  return lim;
}

// An IMAP quoted string, or empty optional when the value cannot be quoted.
bool quote(std::string_view v, std::string* out) {
  out->push_back('"');
  for (char c : v) {
    if (c == '\r' || c == '\n' || c == '\0') return false;
    if (c == '"' || c == '\\') out->push_back('\\');
    out->push_back(c);
  }
  out->push_back('"');
  return true;
}
}  // namespace

ImapSession::ImapSession(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
                         std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener)
    : LoginSession(reactor, slot, gen, fd, peer, std::move(rt), listener),
      parser_(std::make_unique<codec::ImapCommandParser>(limitsFor(listener))),
      append_guard_(codec::ImapAppendGuard::Limits{listener.append_limit}) {}

const PreLoginRules& ImapSession::preLoginRules() const { return kPreLogin; }

std::string ImapSession::capabilities() const {
  std::string caps = "IMAP4rev1 ID LITERAL+ SASL-IR";
  if (listener_.append_limit) caps += " APPENDLIMIT=" + std::to_string(listener_.append_limit);
  if (listener_.tls == conf::TlsMode::kStarttls && !clientTlsActive()) caps += " STARTTLS";
  if (plaintextAllowed())
    caps += " AUTH=PLAIN AUTH=LOGIN";
  else
    caps += " LOGINDISABLED";
  return caps;
}

void ImapSession::sendGreeting() {
  writeClient("* OK [CAPABILITY " + capabilities() + "] " +
              (listener_.banner.empty() ? std::string("mailgate ready.") : listener_.banner) + "\r\n");
}

void ImapSession::tagged(std::string_view text) {
  std::string line(tag_);
  line += ' ';
  line += text;
  line += "\r\n";
  writeClient(line);
}

void ImapSession::badCommand(std::string_view tag, std::string_view text) {
  bad_commands_++;
  if (g_proto_log.allow())
    log::info("imap protocol error", {{"session", id_}, {"client", client_ip_}, {"error", text}});
  if (const filters::Verdict pv = notifyEvent(filters::EventKind::kError); filters::isTerminal(pv.action)) {
    writeClient(std::string(tag) + " BAD " + std::string(text) + "\r\n");
    filters::Verdict bye = pv;
    bye.action = filters::Action::kClose;
    writeClient(renderImap(bye, filters::Stage::kClose, tag).line + "\r\n");
    closeAfterFlush("refused_by_policy");
    return;
  }
  if (bad_commands_ >= listener_.max_bad_commands) {
    writeClient(std::string(tag) + " BAD " + std::string(text) + "\r\n");
    writeClient("* BYE Too many invalid commands.\r\n");
    closeAfterFlush("too_many_errors");
    return;
  }
  writeClient(std::string(tag) + " BAD " + std::string(text) + "\r\n");
}

LoginSession::Parsed ImapSession::feedParser(std::string_view data) {
  const codec::ImapFeed r = parser_->feed(data);
  switch (r.status) {
    case codec::ImapStatus::kNeedMore:
      return {ClientInput::kNeedMore, r.consumed, {}};
    case codec::ImapStatus::kContinuation:
      writeClient("+ OK\r\n");
      return {ClientInput::kAnswered, r.consumed, {}};
    case codec::ImapStatus::kSaslLine:
      return {ClientInput::kSaslLine, r.consumed, parser_->saslLine()};
    case codec::ImapStatus::kCommand:
      return {ClientInput::kCommand, r.consumed, {}};
    case codec::ImapStatus::kError:
      return {ClientInput::kError, r.consumed, {}};
    case codec::ImapStatus::kFatal:
      return {ClientInput::kFatal, r.consumed, {}};
  }
  return {ClientInput::kFatal, r.consumed, {}};
}

void ImapSession::replyFatalInput() {
  if (g_proto_log.allow())
    log::info("imap fatal protocol error", {{"session", id_}, {"error", parser_->errorText()}});
  writeClient(std::string("* BYE ") + std::string(parser_->errorText()) + "\r\n");
}

bool ImapSession::resetParser() {
  const bool pending = parser_->hasPending();
  parser_->reset();
  return pending;
}

void ImapSession::handleCommand() {
  const codec::ImapCommand& c = parser_->command();
  tag_.assign(c.tag);
  switch (c.verb) {
    case codec::ImapVerb::kCapability:
      writeClient("* CAPABILITY " + capabilities() + "\r\n");
      tagged("OK Capability completed.");
      return;
    case codec::ImapVerb::kNoop:
      tagged("OK NOOP completed.");
      return;
    case codec::ImapVerb::kLogout:
      writeClient("* BYE Logging out\r\n");
      tagged("OK Logout completed.");
      closeAfterFlush("logout");
      return;
    case codec::ImapVerb::kStarttls:
      if (listener_.tls != conf::TlsMode::kStarttls || clientTlsStarted()) {
        tagged(clientTlsStarted() ? "BAD TLS is already active." : "BAD STARTTLS is not available.");
        return;
      }
      tagged("OK Begin TLS negotiation now.");
      startClientTlsAfterReply();
      return;
    case codec::ImapVerb::kId:
      writeClient("* ID (\"name\" \"mailgate\")\r\n");
      tagged("OK ID completed.");
      return;
    case codec::ImapVerb::kLogin:
      if (!plaintextAllowed()) {
        tagged("NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS.");
        return;
      }
      if (c.argc != 2 || c.args[0].is_nil || c.args[1].is_nil) {
        badCommand(tag_, "Invalid arguments.");
        return;
      }
      beginLogin(std::string(c.args[0].value), std::string(c.args[1].value));
      return;
    case codec::ImapVerb::kAuthenticate:
      if (c.argc < 1) {
        badCommand(tag_, "Invalid arguments.");
        return;
      }
      authenticateWith(c.args[0].value, c.argc >= 2 ? &c.args[1] : nullptr);
      return;
    case codec::ImapVerb::kOther:
      badCommand(tag_, "Command not allowed before authentication.");
      return;
    case codec::ImapVerb::kUnknown:
      badCommand(tag_, "Unknown command.");
      return;
  }
}

void ImapSession::authenticateWith(std::string_view mech, const codec::ImapArg* initial) {
  if (!plaintextAllowed()) {
    tagged("NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS.");
    return;
  }
  if (!sasl_.begin(mech)) {
    tagged("NO Unsupported authentication mechanism.");
    return;
  }
  if (initial) {
    saslRespond(initial->value);
    return;
  }
  sendSaslChallenge(sasl_.initialChallenge());
}

void ImapSession::replySaslRefused(SaslExchange::Step why) {
  if (why == SaslExchange::Step::kCancelled)
    tagged("BAD Authentication aborted by client.");
  else if (why == SaslExchange::Step::kMalformed)
    tagged("BAD Invalid base64 data in continued response.");
  else
    tagged("NO [AUTHENTICATIONFAILED] Authentication failed.");
}

void ImapSession::replyAuthFailed() {
  tagged("NO [AUTHENTICATIONFAILED] Authentication failed.");
  if (authFailures() >= listener_.max_auth_attempts) {
    writeClient("* BYE Too many authentication failures.\r\n");
    closeAfterFlush("auth_failed");
  }
}

void ImapSession::replyTempFail(const std::string& /*why*/) {
  tagged("NO [UNAVAILABLE] Backend unavailable, try again later.");
  if (authFailures() >= listener_.max_auth_attempts) {
    writeClient("* BYE Too many authentication failures.\r\n");
    closeAfterFlush("auth_failed");
  }
}

void ImapSession::onPreauthTimeout() {
  writeClient("* BYE Disconnected for inactivity.\r\n");
  closeAfterFlush("timeout");
}

// ---- backend side ----

void ImapSession::beginBackendHandshake() {
  bstep_ = BackendStep::kGreeting;
  resetBackendLines();
  b_have_caps_ = b_sasl_ir_ = b_auth_plain_ = b_literal_plus_ = false;
}

void ImapSession::onBackendTlsReady() {
  const conf::BackendConfig* b = currentBackend();
  if (!b) return;
  if (b->tls == conf::TlsMode::kImplicit) {
    beginBackendHandshake();
    return;
  }
  // STARTTLS done: capabilities may differ under TLS; ask again.
  bstep_ = BackendStep::kCapability;
  b_have_caps_ = false;
  writeBackend("C CAPABILITY\r\n");
}

void ImapSession::parseBackendCaps(std::string_view text) {
  b_have_caps_ = true;
  auto has = [&](std::string_view cap) {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find_first_of(" ]", pos);
      if (end == std::string_view::npos) end = text.size();
      std::string_view tok = text.substr(pos, end - pos);
      if (ascii::iequals(tok, cap)) return true;
      pos = end + 1;
    }
    return false;
  };
  b_sasl_ir_ = has("SASL-IR");
  b_auth_plain_ = has("AUTH=PLAIN");
  b_literal_plus_ = has("LITERAL+");
}

void ImapSession::handleBackendLine(std::string_view line) {
  switch (bstep_) {
    case BackendStep::kGreeting: {
      if (ascii::istartsWith(line, "* BYE")) {
        backendAttemptFailed(BackendFailure::kTempRefusal, std::string(line));
        return;
      }
      if (!ascii::istartsWith(line, "* OK")) {
        backendAttemptFailed(BackendFailure::kProtocol, "unexpected greeting");
        return;
      }
      auto p = line.find("[CAPABILITY ");
      if (p != std::string_view::npos) parseBackendCaps(line.substr(p + 12));
      const conf::BackendConfig* b = currentBackend();
      if (b && b->tls == conf::TlsMode::kStarttls) {
        bstep_ = BackendStep::kStarttls;
        writeBackend("S STARTTLS\r\n");
        return;
      }
      if (!b_have_caps_) {
        bstep_ = BackendStep::kCapability;
        writeBackend("C CAPABILITY\r\n");
        return;
      }
      sendBackendLogin();
      return;
    }
    case BackendStep::kStarttls:
      if (line.rfind("S ", 0) != 0) return;  // untagged lines
      if (!ascii::istartsWith(line, "S OK")) {
        backendAttemptFailed(BackendFailure::kTls, "STARTTLS refused: " + std::string(line));
        return;
      }
      if (!startBackendTls(currentBackend()->name))
        backendAttemptFailed(BackendFailure::kTls, "cannot start TLS");
      return;
    case BackendStep::kCapability:
      if (ascii::istartsWith(line, "* CAPABILITY ")) {
        parseBackendCaps(line.substr(13));
        return;
      }
      if (line.rfind("C ", 0) != 0) return;
      if (!ascii::istartsWith(line, "C OK")) {
        backendAttemptFailed(BackendFailure::kProtocol, "CAPABILITY failed");
        return;
      }
      sendBackendLogin();
      return;
    case BackendStep::kPostLoginCapability:
      finishPostLoginCapability(line);
      return;
    case BackendStep::kLogin:
      if (line.rfind("+", 0) == 0) {
        // No SASL-IR after all: send the response now.
        writeBackend(backendPlainResponse() + "\r\n");
        return;
      }
      if (line.rfind("L ", 0) != 0) return;  // untagged and ID's reply
      if (ascii::istartsWith(line, "L OK") && line.find("[CAPABILITY ") == std::string_view::npos) {
        // The node did not say what it can do after login: ask, so the client's
        // reply carries the post-login capabilities.
        ok_text_ = std::string(line.substr(4));
        bstep_ = BackendStep::kPostLoginCapability;
        post_caps_.clear();
        writeBackend("K CAPABILITY\r\n");
        return;
      }
      if (ascii::istartsWith(line, "L OK")) {
        std::string reply = tag_ + std::string(line.substr(1)) + "\r\n";
        if (listener_.append_limit) {
          const size_t p = line.find("[CAPABILITY ");
          const size_t e = line.find(']', p);
          if (e != std::string_view::npos)
            reply = tag_ + std::string(line.substr(1, p + 11)) +
                    withAppendLimit(line.substr(p + 12, e - p - 12)) + std::string(line.substr(e)) + "\r\n";
        }
        parser_.reset();
        loginSucceeded(reply);
        return;
      }
      if (ascii::istartsWith(line, "L NO [UNAVAILABLE]") || ascii::istartsWith(line, "L NO [SERVERBUG]")) {
        backendAttemptFailed(BackendFailure::kTempRefusal, std::string(line));
        return;
      }
      backendLoginRejected(std::string(line));
      return;
  }
}

void ImapSession::finishPostLoginCapability(std::string_view line) {
  if (ascii::istartsWith(line, "* CAPABILITY ")) {
    post_caps_ = std::string(line.substr(13));
    return;
  }
  if (line.rfind("K ", 0) != 0) return;
  std::string text = ok_text_;
  while (!text.empty() && text.front() == ' ') text.erase(text.begin());
  std::string reply = tag_ + " OK ";
  if (!post_caps_.empty()) reply += "[CAPABILITY " + withAppendLimit(post_caps_) + "] ";
  reply += text.empty() ? "Logged in" : text;
  reply += "\r\n";
  parser_.reset();
  loginSucceeded(reply);
}

void ImapSession::sendBackendLogin() {
  bstep_ = BackendStep::kLogin;
  std::string out = "I ID (\"x-originating-ip\" \"" + client_ip_ + "\" \"x-originating-port\" \"" +
                    std::to_string(client_port_) + "\" \"x-connected-ip\" \"" + local_ip_ +
                    "\" \"x-connected-port\" \"" + std::to_string(local_port_) + "\" \"x-session-id\" \"" +
                    id_ + "\")\r\n";
  if (b_auth_plain_ || b_sasl_ir_) {
    if (b_sasl_ir_)
      out += "L AUTHENTICATE PLAIN " + backendPlainResponse() + "\r\n";
    else
      out += "L AUTHENTICATE PLAIN\r\n";
  } else if (masterLogin()) {
    // LOGIN has no authorization identity: a master login needs SASL PLAIN.
    backendAttemptFailed(BackendFailure::kProtocol, "the node offers no AUTH=PLAIN for a master login");
    return;
  } else {
    std::string u, p;
    if (!quote(loginUser(), &u) || !quote(password(), &p)) {
      backendAttemptFailed(BackendFailure::kProtocol, "credentials cannot be sent with LOGIN");
      return;
    }
    out += "L LOGIN " + u + " " + p + "\r\n";
  }
  writeBackend(out);
}

// ---- relay: APPENDLIMIT ----

std::string ImapSession::withAppendLimit(std::string_view caps) const {
  if (!listener_.append_limit) return std::string(caps);
  uint64_t limit = listener_.append_limit;
  std::string out;
  size_t pos = 0;
  while (pos <= caps.size()) {
    size_t end = caps.find(' ', pos);
    if (end == std::string_view::npos) end = caps.size();
    const std::string_view tok = caps.substr(pos, end - pos);
    pos = end + 1;
    if (tok.empty()) continue;
    if (ascii::istartsWith(tok, "APPENDLIMIT")) {
      // The node's own limit, when it is smaller, is the one that holds.
      uint64_t node = 0;
      bool digits = tok.size() > 12 && tok[11] == '=';
      for (size_t i = 12; digits && i < tok.size(); ++i) {
        if (tok[i] < '0' || tok[i] > '9' || node > (UINT64_MAX - 9) / 10)
          digits = false;
        else
          node = node * 10 + static_cast<uint64_t>(tok[i] - '0');
      }
      if (digits && node > 0 && node < limit) limit = node;
      continue;
    }
    if (!out.empty()) out += ' ';
    out.append(tok);
  }
  out += " APPENDLIMIT=" + std::to_string(limit);
  return out;
}

void ImapSession::onRelayData(Side side, std::string_view plain) {
  if (!listener_.append_limit) {
    LoginSession::onRelayData(side, plain);
    return;
  }
  if (side == Side::kBackend) {
    writeClient(plain);
    node_framer_.feed(plain);
    flushInjected();
    return;
  }
  while (!plain.empty() && !closing()) {
    const codec::ImapAppendGuard::Step s = append_guard_.feed(plain);
    plain.remove_prefix(s.consumed);
    switch (s.action) {
      case codec::ImapAppendGuard::Action::kForward:
        if (!s.out.empty()) writeBackend(s.out);
        break;
      case codec::ImapAppendGuard::Action::kNeedMore:
        break;
      case codec::ImapAppendGuard::Action::kRefused:
        appendRefused();
        break;
      case codec::ImapAppendGuard::Action::kAbort:
        if (g_proto_log.allow())
          log::info("imap refused command continued with a large literal",
                    {{"session", id_}, {"client", client_ip_}});
        inject("* BYE Too much data after a refused command.\r\n", true);
        break;
    }
  }
}

void ImapSession::appendRefused() {
  const codec::ImapAppendGuard& g = append_guard_;
  const bool toobig = g.reason() == codec::ImapAppendGuard::Reason::kTooBig;
  std::string r(g.tag());
  if (toobig) {
    filters::policy::policyState().stats.toobig++;
    static log::RateLimit rl(20);  // a client can trigger this at will
    if (rl.allow())
      log::info("imap append too big", {{"session", id_},
                                        {"client", client_ip_},
                                        {"user", user_},
                                        {"size", g.literalSize()},
                                        {"limit", listener_.append_limit},
                                        {"close", g.closeNeeded()},
                                        {"suppressed", rl.suppressed()}});
    r += " NO [TOOBIG] Message too large (limit " + std::to_string(listener_.append_limit) + ")\r\n";
    if (g.closeNeeded()) r += "* BYE [TOOBIG] Message too large.\r\n";
  } else {
    if (g_proto_log.allow())
      log::info("imap command line too long in relay", {{"session", id_}, {"client", client_ip_}});
    r += " BAD Command line too long.\r\n";
    if (g.closeNeeded()) r += "* BYE Command line too long.\r\n";
  }
  inject(r, g.closeNeeded());
}

void ImapSession::inject(std::string_view reply, bool close) {
  inject_.append(reply);
  inject_close_ = inject_close_ || close;
  flushInjected();
}

void ImapSession::flushInjected() {
  if (inject_.empty() || !node_framer_.atBoundary()) return;
  std::string out;
  out.swap(inject_);
  writeClient(out);
  if (inject_close_) closeAfterFlush("append_too_big");
}

}  // namespace mailgate::session
