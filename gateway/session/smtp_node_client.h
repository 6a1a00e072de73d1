#pragma once
// The delivery client towards the storage nodes: one SMTP/LMTP transaction from the
// gateway's spool to a node, as the SMTP front end (SmtpSession) hands it over.
//
// One delivery walks the targets in order (primary, then secondary): connect,
// greeting, EHLO/LHLO, STARTTLS when the backend wants it, XCLIENT when the node
// offers it, MAIL/RCPT/DATA (in one write when the node offers PIPELINING), the
// dot-stuffed body (a file-spooled body in chunks, as the node's queue drains), the
// final reply (LMTP: one per recipient). A failure before the body was queued moves
// on to the next target; after it, the node may have taken the message, so the
// outcome is "unknown" and nothing is sent twice. A delivered transaction keeps the
// connection (kReady) for the client's next message; it is ended with QUIT after an
// idle time, on a new HELO, or when the client quits.
//
// The client does no I/O itself: the bytes go out through NodeTransport and come in
// through onData() (any split), the results go to NodeClientListener. That keeps it
// testable against a scripted node without a ring.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/codec/smtp_reply.h"
#include "gateway/session/deliverable_body.h"
#include "gateway/session/message_spool.h"
#include "gateway/session/session.h"

namespace mailgate::session {

// One storage node a transaction may be delivered to, and how.
struct DeliveryTarget : Candidate {
  bool lmtp = true;
};

// The connection to the node, as the client drives it. Each call may call the
// client back synchronously (a connect that fails at once, for example).
class NodeTransport {
 public:
  virtual ~NodeTransport() = default;
  // Opens a connection to target.addr: onConnected() or onFailed() follows.
  virtual void connect(const DeliveryTarget& target) = 0;
  // Queues bytes for the node.
  virtual void send(std::string_view bytes) = 0;
  // TLS on the connection (name: the backend's, for the certificate check);
  // onTlsReady() or onFailed() follows. False when TLS cannot start.
  virtual bool startTls(const std::string& name) = 0;
  // Forgets the connection (no more events for it).
  virtual void drop() = 0;
  // onTimeout() after ms milliseconds; 0 cancels. One timer: a new call replaces it.
  virtual void armTimer(uint64_t ms) = 0;
  // Whether the owner is closing: the client then stops reading what the node sent.
  virtual bool closed() const = 0;
};

// Where the results go.
class NodeClientListener {
 public:
  virtual ~NodeClientListener() = default;
  // The delivery is over: the reply line for the client (no CRLF) and the outcome
  // (delivered, rejected, partial, failed, unknown). Called once per deliver().
  virtual void onDeliveryDone(std::string_view client_reply, const char* outcome) = 0;
  // LMTP: the node's reply for recipient `index` after the end of data.
  virtual void onRecipientResult(size_t index, const codec::SmtpReply& reply) = 0;
  // A target is tried (or skipped because its address did not resolve).
  virtual void onTargetChosen(const DeliveryTarget& target) = 0;
  // One attempt failed (it may go on with the next target).
  virtual void onAttemptFailed(BackendFailure why, const std::string& detail) = 0;
};

// What one delivery needs to know.
struct NodeTransaction {
  // The client, for XCLIENT and the logs.
  std::string client_ip;
  uint16_t client_port = 0;
  std::string helo;
  bool esmtp = false;
  std::string user;  // authenticated user (submission), or empty
  // The envelope: paths as the client sent them, "<...>".
  std::string mail_from;
  std::vector<std::string> rcpts;
  bool smtputf8 = false;
  bool body_8bit = false;
  std::string queue_id;  // the 250 says "delivered as <queue_id>"
  // For the per-recipient log lines: the listener, and the message's Message-ID.
  std::string listener;
  std::string message_id;
  // Header fields the filters added (each ending CRLF), sent before the message.
  std::string headers;
  // The message, flushed: the spool, or a scanner's replacement for it
  // (SmtpSession::deliverableBody()); it outlives the delivery.
  DeliverableBody* body = nullptr;
  std::vector<DeliveryTarget> targets;
  // The session keeps a queue (queue.store): a partial delivery (LMTP: some recipients
  // accepted, others refused after the data) ends with outcome "partial" and no
  // per-recipient log lines; the session queues the rest and logs each recipient.
  bool queue_partial = false;
};

class SmtpNodeClient {
 public:
  static constexpr uint64_t kNodeReplyMs = 60000;   // one reply (RFC 5321 §4.5.3.2 says 5 min)
  static constexpr uint64_t kNodeFinalMs = 600000;  // the reply after the end of data (§4.5.3.2.6)
  static constexpr uint64_t kNodeQuitMs = 5000;
  // A kept connection waits this long for the client's next message (RFC 5321
  // allows many transactions per connection; each one costs a handshake otherwise).
  static constexpr uint64_t kNodeIdleMs = 30000;
  static constexpr size_t kBodyChunk = 64 * 1024;
  static constexpr size_t kLoggedReply = 300;  // a node's reply text in a log line (then cut)

  // hostname: the gateway's name in EHLO/LHLO; session_id: for the logs.
  SmtpNodeClient(NodeTransport& transport, NodeClientListener& listener, std::string session_id,
                 std::string hostname);
  SmtpNodeClient(const SmtpNodeClient&) = delete;
  SmtpNodeClient& operator=(const SmtpNodeClient&) = delete;

  // Delivers one transaction; onDeliveryDone() follows, perhaps before this returns.
  void deliver(NodeTransaction txn);
  // Ends a kept connection (QUIT), if there is one: a new HELO, or the client quits.
  void releaseKept();
  bool delivering() const { return step_ != Step::kIdle && step_ != Step::kReady && step_ != Step::kQuit; }
  bool kept() const { return step_ == Step::kReady; }
  // After onDeliveryDone(): the node's reply about each recipient in the last attempt
  // (one line, or empty), by index; the node that gave them.
  const std::vector<std::string>& recipientReplies() const { return rcpt_replies_; }
  const std::string& attemptBackend() const { return attempt_backend_; }

  // --- events from the transport ---
  void onConnected();
  void onTlsReady();
  void onData(std::string_view bytes);
  void onFailed(BackendFailure why, const std::string& detail);
  // The node's send queue fell low: the next chunk of the body.
  void onDrained();
  void onTimeout();

 private:
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

  void tryNextTarget();
  void attemptFailed(BackendFailure why, const std::string& detail, bool permanent_reply = false);
  void handleReply(const codec::SmtpReply& r);
  void handleFinal(const codec::SmtpReply& r);
  void sendLine(std::string_view line);
  void sendHello(const std::string& name);  // EHLO/LHLO
  void sendXclientOrMail(const codec::SmtpEhlo& ehlo);
  void sendMail();
  // Whether the sender or a recipient holds an 8-bit (internationalized) address.
  bool envelopeNeedsUtf8() const;
  void sendBody();
  void pumpBody();  // the next chunk of a file-spooled body, when the node has taken the last
  void finishBody(std::string out);  // out (the last stuffed octets, if any) + CRLF.CRLF
  void done(std::string_view client_reply, const char* outcome);
  // One line per recipient, Postfix's `to=<…> status=…`: what became of it.
  void logRecipients(std::string_view client_reply, const char* outcome) const;
  // The node's reply about every recipient / those without one in this attempt yet.
  void replyForAll(const std::string& text);
  void replyForRest(const std::string& text);
  void endConnection();  // QUIT and forget the node connection
  void armTimer(uint64_t ms);

  NodeTransport& transport_;
  NodeClientListener& listener_;
  const std::string session_id_;
  const std::string hostname_;
  NodeTransaction txn_;
  codec::SmtpReplyParser parser_;

  Step step_ = Step::kIdle;
  size_t next_target_ = 0;
  const DeliveryTarget* target_ = nullptr;  // into txn_.targets
  size_t rcpt_index_ = 0;
  size_t final_replies_ = 0;
  size_t final_ok_ = 0;
  std::string final_failed_;  // recipients the node refused after DATA (LMTP)
  bool body_queued_ = false;  // after this, a lost connection may have delivered: no failover
  bool xclient_done_ = false;
  bool tls_done_ = false;
  bool node_8bit_ = false, node_utf8_ = false, node_size_ = false;
  unsigned attempt_ = 0;          // changes with every connection to a node
  bool node_pipelining_ = false;  // the node offers PIPELINING: MAIL, RCPTs and DATA go in one write
  bool reused_ = false;           // this attempt runs on the kept connection
  const conf::BackendConfig* ready_backend_ = nullptr;  // node of the kept connection
  std::string last_reply_;
  // This attempt: the node's reply (or the failure) about each recipient, and the node.
  std::vector<std::string> rcpt_replies_;
  std::string attempt_backend_;
  std::string permanent_reply_;
  // This delivery: a node lacked SMTPUTF8 for an internationalized envelope / a node
  // failed otherwise. Only the first, on every node, makes the refusal 554 5.6.7.
  bool utf8_refused_ = false;
  bool node_failed_ = false;
  // The body pump.
  uint64_t body_off_ = 0;  // next spool octet to stream to the node
  bool body_line_start_ = true;
  std::string body_chunk_;
};

}  // namespace mailgate::session
