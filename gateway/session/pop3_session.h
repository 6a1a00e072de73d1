#pragma once
// POP3 front end: CAPA, STLS, USER/PASS, AUTH PLAIN/LOGIN, QUIT in the
// AUTHORIZATION state; then CAPA/XCLIENT/AUTH PLAIN towards the storage node, the
// node's +OK to the client, and the relay.
#include <memory>
#include <string>

#include "gateway/codec/pop3_command.h"
#include "gateway/session/login_session.h"

namespace mailgate::session {

class Pop3Session final : public LoginSession {
 public:
  Pop3Session(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
              std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener);

 private:
  enum class BackendStep { kGreeting, kCapa, kStls, kXclient, kAuth, kAuthResponse };

  Rendered renderRefusal(const filters::Verdict& v, filters::Stage stage) const override {
    return renderPop3(v, stage);
  }
  void onBackendTlsReady() override;
  uint16_t backendPort(const conf::BackendConfig& b) const override { return b.ports.pop3; }
  void replyAuthFailed() override;
  void replyTempFail(const std::string& why) override;
  void beginBackendHandshake() override;
  void onPreauthTimeout() override;

  const PreLoginRules& preLoginRules() const override;
  std::string goodbyeLine() const override { return "-ERR [SYS/TEMP] shutting down\r\n"; }
  void sendGreeting() override {
    writeClient("+OK " + (listener_.banner.empty() ? std::string("mailgate ready.") : listener_.banner) + "\r\n");
  }
  Parsed feedParser(std::string_view data) override;
  void handleCommand() override;
  void replyBadInput() override { badCommand(parser_->errorText()); }
  void replyFatalInput() override { writeClient("-ERR " + std::string(parser_->errorText()) + "\r\n"); }
  void expectSaslLine() override { parser_->expectSaslLine(); }
  bool resetParser() override;
  bool lineStarted() const override { return parser_ && parser_->hasPending(); }

  void replySaslRefused(SaslExchange::Step why) override;
  void badCommand(std::string_view text);
  void handleBackendLine(std::string_view line) override;
  void afterCapa();
  void sendBackendAuth();

  std::unique_ptr<codec::Pop3CommandParser> parser_;  // freed once the relay starts
  std::string user_arg_;                              // from USER
  unsigned bad_commands_ = 0;
  BackendStep bstep_ = BackendStep::kGreeting;
  bool b_xclient_ = false, b_greeting_xclient_ = false, b_stls_done_ = false;
};

}  // namespace mailgate::session
