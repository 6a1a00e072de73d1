#pragma once
// IMAP front end: speaks IMAP itself until the login succeeds (CAPABILITY, NOOP,
// LOGOUT, STARTTLS, LOGIN, AUTHENTICATE PLAIN/LOGIN with SASL-IR, ID), logs in to the
// storage node by replaying the credentials (after an ID carrying the client's
// address), answers the client's login with the node's tagged reply, then relays.
#include <memory>
#include <string>

#include "gateway/codec/imap_command.h"
#include "gateway/codec/imap_literal_tracker.h"
#include "gateway/session/login_session.h"

namespace mailgate::session {

class ImapSession final : public LoginSession {
 public:
  ImapSession(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
              std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener);

 private:
  enum class BackendStep { kGreeting, kStarttls, kCapability, kLogin, kPostLoginCapability };

  Rendered renderRefusal(const filters::Verdict& v, filters::Stage stage) const override {
    return renderImap(v, stage, tag_.empty() ? std::string_view("*") : std::string_view(tag_));
  }
  void onBackendTlsReady() override;
  uint16_t backendPort(const conf::BackendConfig& b) const override { return b.ports.imap; }
  void replyAuthFailed() override;
  void replyTempFail(const std::string& why) override;
  void beginBackendHandshake() override;
  void onPreauthTimeout() override;

  const PreLoginRules& preLoginRules() const override;
  // Dovecot's shutdown line (RFC 5530 UNAVAILABLE), to idle sessions and at the end of the grace.
  std::string goodbyeLine() const override { return "* BYE [UNAVAILABLE] shutting down\r\n"; }
  void sendGreeting() override;
  Parsed feedParser(std::string_view data) override;
  void handleCommand() override;
  void replyBadInput() override { badCommand(parser_->errorTag(), parser_->errorText()); }
  void replyFatalInput() override;
  void expectSaslLine() override { parser_->expectSaslLine(); }
  bool resetParser() override;
  bool lineStarted() const override { return parser_ && parser_->hasPending(); }

  std::string capabilities() const;
  // APPENDLIMIT (listener append_limit): the relay follows the client's literals.
  void onRelayData(Side side, std::string_view plain) override;
  void appendRefused();
  // A reply of the gateway's own during the relay: sent once the node's stream is
  // between two responses; then a close when `close`.
  void inject(std::string_view reply, bool close);
  void flushInjected();
  // A node's capability list with the listener's APPENDLIMIT in it (the smaller wins).
  std::string withAppendLimit(std::string_view caps) const;
  void replySaslRefused(SaslExchange::Step why) override;
  void authenticateWith(std::string_view mech, const codec::ImapArg* initial);
  void tagged(std::string_view text);
  void badCommand(std::string_view tag, std::string_view text);
  void handleBackendLine(std::string_view line) override;
  void parseBackendCaps(std::string_view text);
  void sendBackendLogin();
  void finishPostLoginCapability(std::string_view line);

  std::unique_ptr<codec::ImapCommandParser> parser_;  // freed once the relay starts
  std::string tag_;                                   // tag of the LOGIN/AUTHENTICATE in progress
  unsigned bad_commands_ = 0;
  // backend handshake
  BackendStep bstep_ = BackendStep::kGreeting;
  std::string ok_text_;    // the node's tagged OK text when it carried no capabilities
  std::string post_caps_;  // from the CAPABILITY we then sent
  codec::ImapAppendGuard append_guard_;
  codec::ImapResponseFramer node_framer_;
  std::string inject_;  // gateway replies waiting for the node's stream to reach a boundary
  bool inject_close_ = false;
  bool b_sasl_ir_ = false, b_auth_plain_ = false, b_literal_plus_ = false, b_have_caps_ = false;
};

}  // namespace mailgate::session
