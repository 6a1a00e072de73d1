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
#include "filters/content_hook.h"
#include "gateway/codec/smtp_command.h"
#include "gateway/codec/smtp_data.h"
#include "gateway/codec/smtp_reply.h"
#include "gateway/session/message_spool.h"
#include "gateway/session/sasl_exchange.h"
#include "gateway/session/session.h"

namespace mailgate::session {

// One storage node a transaction may be delivered to, and how.
struct DeliveryTarget : Candidate {
  bool lmtp = true;
};

class SmtpSession final : public Session {
 public:
  SmtpSession(Reactor& reactor, uint32_t slot, uint32_t gen, int fd, const sockaddr_storage& peer,
              std::shared_ptr<Runtime> rt, const conf::ListenerConfig& listener);
  void start() override;
  // Answer from the worker pool for the RCPT in progress.
  void onRecipientAnswer(auth::RecipientResult result, std::string route_key,
                         std::vector<DeliveryTarget> targets);
  // Answers from the worker pool for AUTH and for the sender check at MAIL.
  void onAuthAnswer(auth::AuthResult result);
  void onSenderAnswer(auth::SenderResult result);
  void onContentDecision(filters::Decision d);

 private:
  enum class Phase {
    kTlsHandshake,
    kCommand,
    kRcptLookup,
    kData,
    kBdat,
    kDelivering,
    kAuthLookup,    // credentials on the worker pool
    kAuthDelay,     // failure delay before the 535
    kSenderLookup,  // MAIL FROM ownership on the worker pool
    kFiltering,     // the content hooks look at the message (worker pool)
  };
  // Steps of one delivery attempt to one node.
  enum class Step {
    kIdle,
    kConnect,
    kGreeting,
    kHello,
    kStarttls,
    kXclient,
    kMail,
    kRcpt,
    kData,
    kBody,  // the message streams to the node (from the spool file)
    kFinal,
    kReady,  // a transaction was delivered; the connection waits for the next one
    kQuit
  };

  // --- Session hooks ---
  void onClientData(std::string_view plain) override;
  void onBackendData(std::string_view plain) override;
  void onClientTlsReady() override;
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
  void beginSpool();
  void messageComplete(codec::SmtpDataError err, uint64_t size);
  void armClientTimer();
  void updateTimer();
  bool busy() const {
    return phase_ == Phase::kRcptLookup || phase_ == Phase::kDelivering || phase_ == Phase::kAuthLookup ||
           phase_ == Phase::kAuthDelay || phase_ == Phase::kSenderLookup || phase_ == Phase::kFiltering;
  }

  // --- delivery ---
  void startDelivery();
  void tryNextTarget();
  void attemptFailed(BackendFailure why, const std::string& detail, bool permanent_reply = false);
  void handleNodeReply(const codec::SmtpReply& r);
  void sendNode(std::string_view line);
  void sendHello(const std::string& name);  // EHLO/LHLO
  void sendMail();
  // Whether the sender or a recipient holds an 8-bit (internationalized) address.
  bool envelopeNeedsUtf8() const;
  void sendBody();
  void pumpBody();  // the next chunk of a file-spooled body, when the node has taken the last
  void finishBody(std::string out);  // out (the last stuffed octets, if any) + CRLF.CRLF
  void onBackendDrained() override;
  void deliveryDone(std::string_view client_reply, const char* outcome);
  void endBackend();  // QUIT and forget the node connection
  void armNodeTimer(uint64_t ms);

  std::unique_ptr<codec::SmtpCommandParser> parser_;
  codec::SmtpDataDecoder data_;
  codec::BdatDecoder bdat_;
  codec::SmtpReplyParser node_;
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
  uint64_t greet_at_ = 0;  // greeting_delay: when the 220 is due
  bool greeted_ = false;
  uint64_t node_deadline_ = 0;

  // submission
  const bool submission_;
  bool authenticated_ = false;
  SaslExchange sasl_;
  bool sasl_wait_ = false;  // a 334 was sent: the next line is a SASL response
  unsigned auth_failures_ = 0;
  uint64_t auth_delay_until_ = 0;
  std::string pending_mail_;  // MAIL path waiting for the sender check
  bool pending_utf8_ = false, pending_8bit_ = false;

  // transaction
  bool in_txn_ = false;
  std::string mail_from_;  // path as sent, "<...>"
  bool smtputf8_ = false;
  bool body_8bit_ = false;
  std::vector<std::string> rcpts_;  // paths as sent, accepted
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
  uint64_t body_off_ = 0;     // next spool octet to stream to the node
  bool body_line_start_ = true;
  std::string body_chunk_;

  // delivery attempt
  Step step_ = Step::kIdle;
  size_t next_target_ = 0;
  const DeliveryTarget* target_ = nullptr;
  size_t rcpt_index_ = 0;
  size_t final_replies_ = 0;
  size_t final_ok_ = 0;
  std::string final_failed_;  // recipients the node refused after DATA (LMTP)
  bool body_queued_ = false;  // after this, a lost connection may have delivered: no failover
  bool xclient_done_ = false;
  bool tls_done_ = false;
  bool node_8bit_ = false, node_utf8_ = false, node_size_ = false;
  unsigned attempt_ = 0;  // changes with every connection to a node
  bool node_pipelining_ = false;  // the node offers PIPELINING: MAIL, RCPTs and DATA go in one write
  bool reused_ = false;     // this attempt runs on the kept connection
  const conf::BackendConfig* ready_backend_ = nullptr;  // node of the kept connection
  std::string last_node_reply_;
  std::string permanent_reply_;
  // This delivery: a node lacked SMTPUTF8 for an internationalized envelope / a node
  // failed otherwise. Only the first, on every node, makes the refusal 554 5.6.7.
  bool utf8_refused_ = false;
  bool node_failed_ = false;
};

}  // namespace mailgate::session
