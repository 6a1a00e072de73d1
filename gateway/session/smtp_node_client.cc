#include "gateway/session/smtp_node_client.h"

#include <algorithm>
#include <utility>

#include "gateway/core/log.h"

namespace mailgate::session {

namespace {
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
}  // namespace

SmtpNodeClient::SmtpNodeClient(NodeTransport& transport, NodeClientListener& listener, std::string session_id,
                               std::string hostname)
    : transport_(transport),
      listener_(listener),
      session_id_(std::move(session_id)),
      hostname_(std::move(hostname)) {}

void SmtpNodeClient::armTimer(uint64_t ms) { transport_.armTimer(ms); }

void SmtpNodeClient::sendLine(std::string_view line) {
  std::string out(line);
  out += "\r\n";
  transport_.send(out);
}

void SmtpNodeClient::deliver(NodeTransaction txn) {
  txn_ = std::move(txn);
  target_ = nullptr;
  next_target_ = 0;
  final_failed_.clear();
  permanent_reply_.clear();
  utf8_refused_ = node_failed_ = false;
  if (step_ == Step::kReady) {
    if (!txn_.targets.empty() && txn_.targets[0].backend == ready_backend_ && txn_.targets[0].error.empty()) {
      // The kept connection goes to the first choice: straight to MAIL.
      next_target_ = 1;
      target_ = &txn_.targets[0];
      listener_.onTargetChosen(*target_);
      rcpt_replies_.assign(txn_.rcpts.size(), std::string());
      attempt_backend_ = target_->backend->name;
      reused_ = true;
      body_queued_ = false;
      rcpt_index_ = 0;
      final_replies_ = 0;
      final_ok_ = 0;
      sendMail();
      return;
    }
    transport_.drop();
    step_ = Step::kIdle;
    armTimer(0);
  }
  tryNextTarget();
}

void SmtpNodeClient::releaseKept() {
  if (step_ == Step::kReady) endConnection();
}

void SmtpNodeClient::tryNextTarget() {
  while (next_target_ < txn_.targets.size()) {
    const DeliveryTarget& t = txn_.targets[next_target_++];
    target_ = &t;
    listener_.onTargetChosen(t);
    rcpt_replies_.assign(txn_.rcpts.size(), std::string());
    attempt_backend_ = t.backend->name;
    if (!t.error.empty()) {
      node_failed_ = true;
      replyForRest("unresolvable: " + t.error);
      log::warn("backend unresolvable",
                {{"session", session_id_}, {"backend", t.backend->name}, {"error", t.error}});
      continue;
    }
    attempt_++;
    parser_.reset();
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
    armTimer(2 * static_cast<uint64_t>(t.backend->connect_timeout.count()));
    transport_.connect(t);
    return;
  }
  target_ = nullptr;
  step_ = Step::kIdle;
  if (utf8_refused_ && !node_failed_) {
    done("554 5.6.7 SMTPUTF8 is required, but no storage node offers it", "rejected");
    return;
  }
  log::warn("smtp delivery failed on every storage node",
            {{"session", session_id_}, {"from", txn_.mail_from}, {"recipients", txn_.rcpts.size()}});
  done("451 4.4.1 Error: storage unavailable, try again later", "failed");
}

void SmtpNodeClient::attemptFailed(BackendFailure why, const std::string& detail, bool permanent_reply) {
  static log::RateLimit attempt_log(20);  // a client can trigger this (a message the node refuses)
  if (attempt_log.allow())
    log::warn("delivery attempt failed", {{"session", session_id_},
                                          {"backend", target_ ? target_->backend->name : ""},
                                          {"class", failureName(why)},
                                          {"detail", detail},
                                          {"suppressed", attempt_log.suppressed()}});
  listener_.onAttemptFailed(why, detail);
  replyForRest(std::string(failureName(why)) + ": " + detail);
  armTimer(0);
  node_failed_ = true;
  if (permanent_reply) {
    // The node refused for good: the client gets the refusal (no other node would take it).
    // With a pipelined envelope the node may still answer DATA with 354: a QUIT would
    // then be message text, so the connection is dropped instead.
    if (node_pipelining_ && (step_ == Step::kMail || step_ == Step::kRcpt || step_ == Step::kData)) {
      transport_.drop();
      step_ = Step::kIdle;
    } else {
      endConnection();
    }
    done(permanent_reply_, "rejected");
    return;
  }
  transport_.drop();
  step_ = Step::kIdle;
  if (reused_ && !body_queued_) {
    // The kept connection had gone stale (the node closed it, or answers 421 at the
    // end of its idle time or its per-connection limit): one fresh connection.
    reused_ = false;
    next_target_ = 0;
    tryNextTarget();
    return;
  }
  if (body_queued_ && txn_.queue_partial && target_ && target_->lmtp && final_ok_ > 0) {
    // LMTP answers per recipient: those the node accepted have the message; the ones
    // it did not answer before it was lost go to the session's queue.
    done("451 4.4.1 Error: delivery incomplete, try again later", "partial");
    return;
  }
  if (body_queued_ && why != BackendFailure::kTempRefusal) {
    // The node may have taken the message before the connection was lost: another
    // node would make a second copy. The client retries later.
    done("451 4.4.1 Error: delivery outcome unknown, try again later", "unknown");
    return;
  }
  tryNextTarget();
}

void SmtpNodeClient::onConnected() {
  step_ = Step::kGreeting;
  armTimer(kNodeReplyMs);
  if (target_ && target_->backend->tls == conf::TlsMode::kImplicit) {
    if (!transport_.startTls(target_->backend->name)) attemptFailed(BackendFailure::kTls, "cannot start TLS");
  }
}

void SmtpNodeClient::onTlsReady() {
  if (step_ == Step::kStarttls) {
    tls_done_ = true;
    parser_.reset();
    sendHello(hostname_);
  }
}

void SmtpNodeClient::onFailed(BackendFailure why, const std::string& detail) {
  if (step_ == Step::kIdle || step_ == Step::kQuit || step_ == Step::kReady) {
    transport_.drop();
    step_ = Step::kIdle;
    armTimer(0);
    return;
  }
  attemptFailed(why, detail);
}

void SmtpNodeClient::onData(std::string_view data) {
  const unsigned attempt = attempt_;
  while (!data.empty()) {
    codec::SmtpReplyFeed r = parser_.feed(data);
    data.remove_prefix(r.consumed);
    if (r.status == codec::SmtpReplyStatus::kNeedMore) return;
    if (r.status == codec::SmtpReplyStatus::kError) {
      onFailed(BackendFailure::kProtocol, "malformed reply: " + std::string(parser_.errorText()));
      return;
    }
    handleReply(parser_.reply());
    if (attempt != attempt_ || transport_.closed() || step_ == Step::kIdle) return;
  }
}

void SmtpNodeClient::onTimeout() {
  if (step_ == Step::kQuit) {
    transport_.drop();
    step_ = Step::kIdle;
  } else if (step_ == Step::kReady) {
    endConnection();
  } else if (step_ != Step::kIdle) {
    attemptFailed(BackendFailure::kTimeout, "no reply from the node in time");
  }
}

void SmtpNodeClient::sendHello(const std::string& name) {
  step_ = Step::kHello;
  armTimer(kNodeReplyMs);
  sendLine((target_->lmtp ? "LHLO " : "EHLO ") + name);
}

void SmtpNodeClient::sendXclientOrMail(const codec::SmtpEhlo& ehlo) {
  if (ehlo.xclient && !xclient_done_) {
    const std::string& ip = txn_.client_ip;
    std::string line = "XCLIENT";
    if (ehlo.xclient_attrs & codec::kXclientAddr)
      line += " ADDR=" + xtext(ip.find(':') != std::string::npos ? "IPV6:" + ip : ip);
    if (ehlo.xclient_attrs & codec::kXclientPort) line += " PORT=" + std::to_string(txn_.client_port);
    if (ehlo.xclient_attrs & codec::kXclientHelo)
      line += " HELO=" + (txn_.helo.empty() ? "[UNAVAILABLE]" : xtext(txn_.helo));
    if (ehlo.xclient_attrs & codec::kXclientProto)
      line += std::string(" PROTO=") + (txn_.esmtp ? "ESMTP" : "SMTP");
    if ((ehlo.xclient_attrs & codec::kXclientLogin) && !txn_.user.empty())
      line += " LOGIN=" + xtext(txn_.user);
    if (line.size() > 7) {
      step_ = Step::kXclient;
      xclient_done_ = true;
      armTimer(kNodeReplyMs);
      sendLine(line);
      return;
    }
  }
  sendMail();
}

void SmtpNodeClient::sendMail() {
  if (txn_.smtputf8 && !node_utf8_ && envelopeNeedsUtf8()) {
    // RFC 6531 §3.2: an internationalized address never goes to a server that does
    // not offer SMTPUTF8. Not the node's failure: the next node may offer it; when
    // none does, the transaction is refused (tryNextTarget).
    log::info("storage node does not offer SMTPUTF8",
              {{"session", session_id_}, {"backend", target_->backend->name}});
    utf8_refused_ = true;
    transport_.drop();
    step_ = Step::kIdle;
    armTimer(0);
    tryNextTarget();
    return;
  }
  step_ = Step::kMail;
  armTimer(kNodeReplyMs);
  std::string line = "MAIL FROM:" + txn_.mail_from;
  if (node_size_) line += " SIZE=" + std::to_string(txn_.headers.size() + txn_.body->size());
  if (txn_.body_8bit && node_8bit_) line += " BODY=8BITMIME";
  if (txn_.smtputf8 && node_utf8_) line += " SMTPUTF8";
  if (node_pipelining_) {
    // RFC 2920: MAIL, every RCPT and DATA in one write; the replies are read in order.
    line += "\r\n";
    for (const std::string& r : txn_.rcpts) line += "RCPT TO:" + r + "\r\n";
    line += "DATA\r\n";
    transport_.send(line);
    return;
  }
  sendLine(line);
}

bool SmtpNodeClient::envelopeNeedsUtf8() const {
  auto eight_bit = [](std::string_view a) {
    return std::any_of(a.begin(), a.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
  };
  return eight_bit(txn_.mail_from) || std::any_of(txn_.rcpts.begin(), txn_.rcpts.end(), eight_bit);
}

void SmtpNodeClient::sendBody() {
  body_off_ = 0;
  body_line_start_ = true;
  std::string out;
  stuff(txn_.headers, &body_line_start_, &out);
  if (txn_.body->inFile()) {
    step_ = Step::kBody;
    if (!out.empty()) transport_.send(out);
    pumpBody();
    return;
  }
  stuff(txn_.body->memory(), &body_line_start_, &out);
  finishBody(std::move(out));
}

void SmtpNodeClient::pumpBody() {
  // Called at the start and whenever the node's queue falls low (onDrained): one
  // chunk of the message is read and queued at a time.
  if (step_ != Step::kBody) return;
  DeliverableBody& spool = *txn_.body;
  if (body_off_ < spool.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kBodyChunk, spool.size() - body_off_));
    const auto got = spool.fetch(body_off_, n, &body_chunk_, [this] { pumpBody(); });
    if (got == DeliverableBody::Fetch::kPending) return;  // read on the spool thread; pumpBody runs again
    if (got == DeliverableBody::Fetch::kError || body_chunk_.size() != n) {
      log::error("smtp spool read failed", {{"session", session_id_}, {"error", spool.error()}});
      attemptFailed(BackendFailure::kInternal, "spool read failed");
      return;
    }
    body_off_ += n;
    std::string out;
    stuff(body_chunk_, &body_line_start_, &out);
    armTimer(kNodeReplyMs);
    transport_.send(out);
    if (transport_.closed() || step_ != Step::kBody || body_off_ < spool.size())
      return;  // onDrained continues
  }
  std::string().swap(body_chunk_);
  finishBody({});
}

void SmtpNodeClient::finishBody(std::string out) {
  if (!body_line_start_) out += "\r\n";  // a message that does not end with CRLF
  out += ".\r\n";
  body_queued_ = true;
  step_ = Step::kFinal;
  armTimer(kNodeFinalMs);
  transport_.send(out);
}

void SmtpNodeClient::onDrained() {
  if (step_ == Step::kBody) pumpBody();
}

void SmtpNodeClient::handleReply(const codec::SmtpReply& r) {
  last_reply_ = replyText(r);
  auto refused = [&](const char* what) {
    if (r.permanent()) {
      permanent_reply_ = std::to_string(r.code) + " " +
                         (r.enhanced_text.empty() ? std::string("5.0.0") : std::string(r.enhanced_text)) +
                         " Storage refused " + what;
      attemptFailed(BackendFailure::kTempRefusal, last_reply_, true);
    } else {
      attemptFailed(BackendFailure::kTempRefusal, last_reply_);
    }
  };
  switch (step_) {
    case Step::kIdle:
    case Step::kConnect:
      onFailed(BackendFailure::kProtocol, "unexpected reply");
      return;
    case Step::kGreeting:
      if (r.code != 220) {
        attemptFailed(BackendFailure::kTempRefusal, last_reply_);
        return;
      }
      sendHello(hostname_);
      return;
    case Step::kHello: {
      codec::SmtpEhlo ehlo;
      if (!parseEhloReply(r, &ehlo)) {
        attemptFailed(BackendFailure::kProtocol, last_reply_);
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
        armTimer(kNodeReplyMs);
        sendLine("STARTTLS");
        return;
      }
      sendXclientOrMail(ehlo);
      return;
    }
    case Step::kStarttls:
      if (r.code != 220) {
        attemptFailed(BackendFailure::kTls, last_reply_);
        return;
      }
      if (!transport_.startTls(target_->backend->name))
        attemptFailed(BackendFailure::kTls, "cannot start TLS");
      return;  // onTlsReady continues
    case Step::kXclient:
      if (r.positive()) {
        // XCLIENT restarts the session: greet again, in the client's name, or the
        // node records the gateway's name as the client's HELO.
        sendHello(txn_.helo.empty() ? hostname_ : txn_.helo);
      } else {
        log::warn("node refused XCLIENT",
                  {{"session", session_id_}, {"backend", target_->backend->name}, {"reply", last_reply_}});
        sendMail();
      }
      return;
    case Step::kMail:
      if (!r.positive()) {
        replyForAll(last_reply_);
        refused("the sender");
        return;
      }
      rcpt_index_ = 0;
      step_ = Step::kRcpt;
      armTimer(kNodeReplyMs);
      if (!node_pipelining_) sendLine("RCPT TO:" + txn_.rcpts[0]);
      return;
    case Step::kRcpt:
      if (rcpt_index_ < rcpt_replies_.size()) rcpt_replies_[rcpt_index_] = last_reply_;
      if (!r.positive()) {
        refused(("the recipient " + txn_.rcpts[rcpt_index_]).c_str());
        return;
      }
      if (++rcpt_index_ < txn_.rcpts.size()) {
        armTimer(kNodeReplyMs);
        if (!node_pipelining_) sendLine("RCPT TO:" + txn_.rcpts[rcpt_index_]);
        return;
      }
      step_ = Step::kData;
      armTimer(kNodeReplyMs);
      if (!node_pipelining_) sendLine("DATA");
      return;
    case Step::kData:
      if (r.code != 354) {
        replyForAll(last_reply_);
        refused("the message");
        return;
      }
      sendBody();
      return;
    case Step::kBody:  // nothing is due while the message streams
      attemptFailed(BackendFailure::kProtocol, "reply before the end of data: " + last_reply_);
      return;
    case Step::kFinal:
      handleFinal(r);
      return;
    case Step::kReady:  // e.g. the node's own idle timeout (421): forget the connection
    case Step::kQuit:
      transport_.drop();
      step_ = Step::kIdle;
      armTimer(0);
      return;
  }
}

void SmtpNodeClient::handleFinal(const codec::SmtpReply& r) {
  const size_t expected = target_->lmtp ? txn_.rcpts.size() : 1;
  const size_t i = final_replies_++;
  if (target_->lmtp) listener_.onRecipientResult(i, r);
  if (!target_->lmtp)
    replyForAll(last_reply_);
  else if (i < rcpt_replies_.size())
    rcpt_replies_[i] = last_reply_;
  if (r.positive()) {
    final_ok_++;
  } else {
    if (!final_failed_.empty()) final_failed_ += ", ";
    final_failed_ += (target_->lmtp ? txn_.rcpts[i] + " " : std::string()) + last_reply_;
    if (permanent_reply_.empty() && r.permanent())
      permanent_reply_ = std::to_string(r.code) + " " +
                         (r.enhanced_text.empty() ? std::string("5.0.0") : std::string(r.enhanced_text)) +
                         " Storage refused the message";
    if (!r.permanent()) permanent_reply_ = "-";  // some refusal was temporary
  }
  if (final_replies_ < expected) {
    armTimer(kNodeFinalMs);
    return;
  }
  armTimer(0);
  if (final_ok_ == expected) {
    // Kept for the client's next message.
    step_ = Step::kReady;
    ready_backend_ = target_->backend;
    armTimer(kNodeIdleMs);
    log::info("smtp delivered", {{"session", session_id_},
                                 {"client", txn_.client_ip},
                                 {"from", txn_.mail_from},
                                 {"recipients", txn_.rcpts.size()},
                                 {"size", txn_.body->size()},
                                 {"backend", target_->backend->name},
                                 {"queue_id", txn_.queue_id},
                                 {"message_id", txn_.message_id},
                                 {"reply", std::string_view(last_reply_).substr(0, kLoggedReply)}});
    done("250 2.0.0 Ok: delivered as " + txn_.queue_id, "delivered");
    return;
  }
  if (final_ok_ > 0) {
    // Part delivered: nothing is acknowledged that was not delivered; the client
    // retries the whole transaction.
    log::warn("smtp delivery partly refused by the node",
              {{"session", session_id_}, {"backend", target_->backend->name}, {"failed", final_failed_}});
    endConnection();
    done("451 4.4.1 Error: delivery incomplete, try again later", "partial");
    return;
  }
  if (!permanent_reply_.empty() && permanent_reply_ != "-") {
    log::warn("smtp message refused by the node",
              {{"session", session_id_}, {"backend", target_->backend->name}, {"failed", final_failed_}});
    endConnection();
    done(permanent_reply_, "rejected");
    return;
  }
  permanent_reply_.clear();
  attemptFailed(BackendFailure::kTempRefusal, final_failed_);
}

void SmtpNodeClient::endConnection() {
  if (step_ == Step::kIdle || step_ == Step::kConnect) {
    transport_.drop();
    step_ = Step::kIdle;
    return;
  }
  step_ = Step::kQuit;
  sendLine("QUIT");
  armTimer(kNodeQuitMs);
}

void SmtpNodeClient::replyForAll(const std::string& text) {
  for (std::string& r : rcpt_replies_) r = text;
}

void SmtpNodeClient::replyForRest(const std::string& text) {
  // A recipient accepted at RCPT is not delivered; one the LMTP node answered after
  // the data keeps that answer.
  const size_t answered = body_queued_ && target_ && target_->lmtp ? final_replies_ : 0;
  for (size_t i = answered; i < rcpt_replies_.size(); ++i)
    if (rcpt_replies_[i].empty() || rcpt_replies_[i][0] == '2') rcpt_replies_[i] = text;
}

void SmtpNodeClient::logRecipients(std::string_view client_reply, const char* outcome) const {
  // The recipient's fate as the client was told it, except that in a partial
  // delivery the recipients the node took are in their mailboxes (the client retries
  // the whole transaction: they may get the message twice).
  const char cls = client_reply.empty() ? '4' : client_reply[0];
  const bool partial = std::string_view(outcome) == "partial";
  for (size_t i = 0; i < txn_.rcpts.size(); i++) {
    const std::string& node_reply = i < rcpt_replies_.size() ? rcpt_replies_[i] : std::string();
    const char* status = cls == '2' ? "delivered" : cls == '5' ? "refused" : "deferred";
    if (partial && !node_reply.empty() && node_reply[0] == '2') status = "delivered";
    log::info("smtp recipient", {{"session", session_id_},
                                 {"listener", txn_.listener},
                                 {"client", txn_.client_ip},
                                 {"queue_id", txn_.queue_id},
                                 {"message_id", txn_.message_id},
                                 {"from", txn_.mail_from},
                                 {"to", txn_.rcpts[i]},
                                 {"status", status},
                                 {"backend", attempt_backend_},
                                 {"node_reply", std::string_view(node_reply).substr(0, kLoggedReply)},
                                 {"size", txn_.headers.size() + (txn_.body ? txn_.body->size() : 0)},
                                 {"reply", client_reply},
                                 {"outcome", outcome}});
  }
}

void SmtpNodeClient::done(std::string_view client_reply, const char* outcome) {
  // A partial delivery the session queues: it logs each recipient once it knows.
  if (!(txn_.queue_partial && std::string_view(outcome) == "partial")) logRecipients(client_reply, outcome);
  if (step_ != Step::kQuit && step_ != Step::kReady) armTimer(0);
  // The transaction is released here (a kept connection needs none of it); the
  // listener may start the next one.
  target_ = nullptr;
  NodeTransaction finished = std::move(txn_);
  txn_ = NodeTransaction{};
  std::string().swap(body_chunk_);
  listener_.onDeliveryDone(client_reply, outcome);
}

}  // namespace mailgate::session
