#pragma once
// SMTP front end for the MX (listener protocol smtp) and for submission (protocol
// submission): RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
// ENHANCEDSTATUSCODES, CHUNKING, STARTTLS and, on submission, AUTH (RFC 4954:
// PLAIN and LOGIN, only over TLS unless allow_plaintext_auth).
// MX: recipients
// are checked against the directory on the worker pool at RCPT time and routed; the
// message is spooled in memory (bounded by max_message_size) and delivered to the
// storage node over LMTP or SMTP, primary first, then secondary. The client's reply
// to DATA / BDAT LAST is given only after the node has answered: 250 only when the
// node accepted the message for every recipient.
// Submission: AUTH before MAIL; the envelope sender must be the user's own
// (directory senderAllowed, unless sender_check: any); every recipient goes to
// routing.submission_relay over SMTP, with XCLIENT LOGIN= when the relay offers it.
//
// Phases: greeting → commands ⇄ (recipient lookup | DATA | BDAT chunk | delivery).
// While a lookup or a delivery runs, the client is paused and its pipelined bytes
// are held (bounded) and parsed afterwards, so replies keep their order.
#include <memory>
#include <string>
#include <vector>

#include "auth/directory.h"
#include "gateway/codec/smtp_command.h"
#include "gateway/codec/smtp_data.h"
#include "gateway/codec/smtp_reply.h"
#include "gateway/core/result.h"
#include "gateway/queue/queue_store.h"
#include "gateway/session/message_spool.h"
#include "gateway/session/replacement_body.h"
#include "gateway/session/sasl_exchange.h"
#include "gateway/session/session.h"
#include "gateway/session/smtp_node_client.h"

namespace mailgate::session {

class ExecutorStep;

class SmtpSession final : public Session {
 public:
  SmtpSession(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
              std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener);
  void start() override;

 private:
  static constexpr size_t kLoggedMessageId = 200;  // a Message-ID in a log line (then cut)
  enum class Phase {
    kTlsHandshake,
    kCommand,
    kData,
    kBdat,
    kDelivering,
    kAuthDelay,     // failure delay before the 535
    kWaiting,       // a stage of the session's filters runs (auth, mail, rcpt, data)
    kSpooling,      // the spool thread writes the end of the message
  };
  // --- Session hooks ---
  void onClientData(std::string_view plain) override;
  void onBackendData(std::string_view plain) override;
  void onClientTlsReady() override;
  Rendered renderRefusal(const filters::Verdict& v, filters::Stage stage) const override {
    return renderSmtp(v, stage, hostname_);
  }
  void onStageDone(filters::Stage stage, filters::Verdict verdict) override;
  std::string goodbyeLine() const override { return "421 4.3.2 " + hostname_ + " Service shutting down\r\n"; }
  // Shutdown: between commands (a message being received, a lookup, a delivery
  // finish first and are answered; then the 421).
  bool idleForGoodbye() const override {
    return phase_ == Phase::kCommand && !parser_->hasPending() && in_off_ == in_.size();
  }
  void addBuiltinFilters(FilterChain& chain) override;
  void chainHold() override;
  // Runs a stage of the session's filters; onStageDone() continues.
  void waitFor(filters::Stage stage);
  // A recipient refused: the reply, and a rate-limited log line with the reason.
  void refuseRcpt(std::string_view rcpt, std::string_view reason, const std::string& line);
  void logRcptRefused(std::string_view rcpt, std::string_view reason, std::string_view line,
                      std::string_view detail = {});
  void onRecipientAnswer(auth::RecipientResult result, std::string route_key,
                         std::vector<DeliveryTarget> targets);
  void onAuthAnswer(auth::AuthResult result);
  // 421 and a close when the session has had max_auth_attempts failures; false if not.
  bool closeOnTooManyAuthFailures();
  void onSenderAnswer(auth::SenderResult result);
  // The verdict of a stage refused the command: the reply (and a close if it says so).
  void refuseStage(filters::Stage stage, const filters::Verdict& v);
  void onBackendConnected() override;
  void onBackendTlsReady() override;
  void onBackendFailed(BackendFailure why, const std::string& detail) override;
  void onTimer() override;

  // --- client side ---
  void sendGreeting();
  // The busy phase is over: read the client again (and what it has pipelined).
  void resumeClient();
  void process();
  size_t processCommands(std::string_view in);
  size_t processData(std::string_view in);
  size_t processBdat(std::string_view in);
  void handleCommand(const codec::SmtpCommand& c);
  void sendHeloReply();  // 250 to HELO, or the EHLO capabilities
  void handleMail(const codec::SmtpCommand& c);
  void handleRcpt(const codec::SmtpCommand& c);
  void handleData();
  void handleBdat(const codec::SmtpCommand& c);
  void handleStarttls();
  void handleAuth(const codec::SmtpCommand& c);
  void saslStep(SaslExchange::Step step);
  void beginAuth();
  void acceptMail();
  void runContentHooks();
  bool authOffered() const;
  void reply(std::string_view line);  // one complete reply, CRLF added
  void badCommand(std::string_view line);
  void parserError();
  void resetTransaction();
  // The transaction ends with one reply: counted by its class (delivered, deferred,
  // rejected), the transaction reset, the client read again.
  void endTransaction(std::string_view client_reply);
  void beginSpool();
  void messageComplete(codec::SmtpDataError err, uint64_t size);
  std::shared_ptr<MessageSpool> newSpool();  // set up for the reactor's spool thread
  void spoolFlushed();  // the message is all in the spool (or the spool failed)
  void armClientTimer();
  // limits.early_talker names this listener (greet_wait, the pipelining test).
  bool earlyTalkerListener() const;
  // The client talked when it could not have read our reply yet: refused per
  // limits.early_talker.action (for reject: reject_line + ": " + what), counted, logged, closed.
  void refuseEarlyTalker(std::string_view what, std::string_view reject_line, size_t bytes);
  void updateTimer();
  bool busy() const {
    return phase_ == Phase::kWaiting || phase_ == Phase::kDelivering || phase_ == Phase::kAuthDelay ||
           phase_ == Phase::kSpooling;
  }

  // --- quarantine: the message goes to hooks.quarantine instead of the node ---
  void quarantineMessage(filters::Verdict v);
  void quarantineDone(const filters::Verdict& v, const Result<std::string>& id, uint64_t size);

  // --- delivery (SmtpNodeClient speaks to the node) ---
  void startDelivery();
  void onBackendDrained() override;
  void deliveryDone(std::string_view client_reply, const char* outcome);
  // The node client's view of this session: the backend connection and the timer
  // (Session services), and where its results go.
  class NodeLink final : public NodeTransport, public NodeClientListener {
   public:
    explicit NodeLink(SmtpSession& s) : s_(s) {}
    void connect(const DeliveryTarget& target) override;
    void send(std::string_view bytes) override;
    bool startTls(const std::string& name) override;
    void drop() override;
    void armTimer(uint64_t ms) override;
    bool closed() const override;
    void onDeliveryDone(std::string_view client_reply, const char* outcome) override;
    void onRecipientResult(size_t index, const codec::SmtpReply& reply) override;
    void onTargetChosen(const DeliveryTarget& target) override;
    void onAttemptFailed(BackendFailure why, const std::string& detail) override;

   private:
    SmtpSession& s_;
  };

  std::unique_ptr<codec::SmtpCommandParser> parser_;
  codec::SmtpDataDecoder data_;
  codec::BdatDecoder bdat_;
  Phase phase_ = Phase::kCommand;
  std::string in_;  // client bytes not yet parsed (held while busy)
  bool in_process_ = false;
  size_t in_off_ = 0;
  std::string hostname_;
  std::string helo_;
  bool esmtp_ = false;
  unsigned bad_commands_ = 0;
  unsigned messages_ = 0;
  uint64_t client_deadline_ = 0;
  bool greeted_ = false;
  uint64_t node_deadline_ = 0;
  uint64_t line_started_ = 0;  // kCommand: first byte of the unfinished command line came then; 0 = none

  // submission
  const bool submission_;
  bool authenticated_ = false;
  SaslExchange sasl_;
  bool sasl_wait_ = false;  // a 334 was sent: the next line is a SASL response
  unsigned auth_failures_ = 0;
  uint64_t auth_credential_ = 0;  // hash of the user and password being checked (policy: distinct credentials)
  uint64_t auth_delay_until_ = 0;
  std::string pending_mail_;  // MAIL path waiting for the sender check
  // The session's own steps in its filter chain (owned by the chain), and what their
  // answers left for onStageDone().
  ExecutorStep* auth_step_ = nullptr;
  ExecutorStep* sender_step_ = nullptr;
  ExecutorStep* rcpt_step_ = nullptr;
  auth::AuthResult auth_result_;
  auth::SenderResult sender_result_ = auth::SenderResult::kTempFail;
  bool sender_asked_ = false;  // the mail stage carries a sender check
  auth::RecipientResult rcpt_result_ = auth::RecipientResult::kTempFail;
  std::string rcpt_route_key_;
  std::vector<DeliveryTarget> rcpt_targets_;
  std::string added_headers_;
  uint64_t spool_deadline_ = 0;  // kSpooling: when the spool thread must have written the message  // the data stage's added header fields, for the node
  bool pending_utf8_ = false, pending_8bit_ = false;

  // transaction
  bool in_txn_ = false;
  std::string mail_from_;  // path as sent, "<...>"
  bool smtputf8_ = false;
  bool body_8bit_ = false;
  std::string pending_rcpt_;        // path of the RCPT being looked up
  std::string txn_route_;           // primary node of the first accepted recipient
  std::vector<DeliveryTarget> targets_;
  bool bdat_started_ = false;
  bool bdat_reject_ = false;  // the chunk is read and discarded, then refused
  std::string bdat_reject_reply_;
  bool bdat_last_ = false;
  uint64_t discard_left_ = 0;   // octets of a refused BDAT chunk still to skip
  bool discard_input_ = false;  // STARTTLS answered: drop every byte already received
  size_t input_after_line_ = 0;  // client bytes already here after the command being handled
  // Received: header + message (unstuffed): in memory up to server.spool_memory,
  // then in a temporary file; bounded by the listener's max_message_size. Released
  // as soon as the transaction ends.
  std::shared_ptr<MessageSpool> spool_;
  // A data-stage scanner's replacement for spool_ (null: none); delivered instead.
  std::shared_ptr<ReplacementBody> replacement_;
  DeliverableBody* deliverableBody() { return replacement_ ? static_cast<DeliverableBody*>(replacement_.get()) : spool_.get(); }

  // The transaction as it went to the node (for the exception queue): the header
  // fields the filters added, the queue id the client is told, the Message-ID.
  std::string delivery_headers_;
  std::string delivery_queue_id_;
  std::string delivery_message_id_;
  std::vector<queue::QueueRcpt> queued_rcpts_;  // queueRest(): each recipient's state, for queueDone()
  // The exception queue (rt_->queue): a resent copy of a queued message, the partial
  // delivery's open recipients written durably before the 250.
  void checkQueuedCopies();
  void onQueuedCopies(const Result<std::vector<queue::QueueEntry>>& found);
  void deliverToNodes();
  void queueRest();
  void queueDone(queue::QueueStore::Put put, const std::string& error, uint64_t size);
  bool queueFull();

  // delivery: the node client, and the connection it may keep between transactions
  NodeLink node_link_{*this};
  SmtpNodeClient node_client_;
};

}  // namespace mailgate::session
