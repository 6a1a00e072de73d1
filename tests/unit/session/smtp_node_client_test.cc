// SmtpNodeClient against a scripted node: a fake transport records what the client
// sent and the test plays the node's replies. Every exchange runs twice: the replies
// fed whole, and one byte at a time.
#include "gateway/session/smtp_node_client.h"
#include "gateway/session/replacement_body.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace mailgate::session {
namespace {

class FakeNode final : public NodeTransport, public NodeClientListener {
 public:
  // --- transport ---
  void connect(const DeliveryTarget& t) override {
    events.push_back("connect " + t.backend->name);
    connected = true;
    generation++;
  }
  void send(std::string_view bytes) override {
    out.append(bytes);
    sends++;
  }
  bool startTls(const std::string& name) override {
    events.push_back("tls " + name);
    return true;
  }
  void drop() override {
    events.push_back("drop");
    connected = false;
    generation++;
  }
  void armTimer(uint64_t ms) override { timer_ms = ms; }
  bool closed() const override { return false; }

  // --- listener ---
  void onDeliveryDone(std::string_view reply, const char* what) override {
    done_reply.assign(reply);
    outcome = what;
    done_count++;
  }
  void onRecipientResult(size_t index, const codec::SmtpReply& reply) override {
    rcpt_results.emplace_back(index, reply.code);
  }
  void onTargetChosen(const DeliveryTarget& t) override { chosen.push_back(t.backend->name); }
  void onAttemptFailed(BackendFailure why, const std::string&) override { failures.push_back(why); }

  // What the client sent since the last call.
  std::string take() {
    std::string s;
    s.swap(out);
    sends = 0;
    return s;
  }
  std::vector<std::string> takeEvents() {
    std::vector<std::string> e;
    e.swap(events);
    return e;
  }

  std::string out;
  unsigned sends = 0;  // send() calls since take()
  std::vector<std::string> events;
  bool connected = false;
  unsigned generation = 0;  // changes with every connect and drop
  uint64_t timer_ms = 0;
  std::string done_reply;
  std::string outcome;
  unsigned done_count = 0;
  std::vector<std::pair<size_t, uint16_t>> rcpt_results;
  std::vector<std::string> chosen;
  std::vector<BackendFailure> failures;
};

using Events = std::vector<std::string>;

class SmtpNodeClientTest : public ::testing::TestWithParam<bool> {
 protected:
  SmtpNodeClientTest() : client_(fake_, fake_, "S1", "gw.test"), spool_(1 << 20, "/tmp") {
    a_.name = "node-a";
    b_.name = "node-b";
  }

  DeliveryTarget target(const conf::BackendConfig& bc, bool lmtp) {
    DeliveryTarget t;
    t.backend = &bc;
    t.lmtp = lmtp;
    return t;
  }

  NodeTransaction txn(std::vector<DeliveryTarget> targets, std::vector<std::string> rcpts,
                      std::string_view body = "Subject: t\r\n\r\nhi\r\n") {
    spool_.clear();
    spool_.write(body);
    EXPECT_TRUE(spool_.flush());
    NodeTransaction t;
    t.client_ip = "192.0.2.7";
    t.client_port = 4711;
    t.helo = "client.example";
    t.esmtp = true;
    t.mail_from = "<a@x.example>";
    t.rcpts = std::move(rcpts);
    t.queue_id = "S1-1";
    t.body = &spool_;
    t.targets = std::move(targets);
    return t;
  }

  // The node's bytes, whole or one at a time; what follows a drop or a new
  // connection is never read (as with a real socket).
  void node(std::string_view bytes) {
    ASSERT_TRUE(fake_.connected) << "the node speaks on a closed connection";
    const unsigned gen = fake_.generation;
    if (!GetParam()) {
      client_.onData(bytes);
      return;
    }
    for (char c : bytes) {
      if (!fake_.connected || fake_.generation != gen) return;
      client_.onData(std::string_view(&c, 1));
    }
  }

  // connect → greeting → EHLO/LHLO with `caps` (the lines after the first).
  void handshake(bool lmtp, std::string_view caps) {
    ASSERT_TRUE(fake_.connected);
    client_.onConnected();
    node("220 node ESMTP\r\n");
    EXPECT_EQ(fake_.take(), lmtp ? "LHLO gw.test\r\n" : "EHLO gw.test\r\n");
    node(caps.empty() ? std::string("250 node\r\n") : "250-node\r\n" + std::string(caps));
  }

  FakeNode fake_;
  SmtpNodeClient client_;
  MessageSpool spool_;
  conf::BackendConfig a_, b_;
};

INSTANTIATE_TEST_SUITE_P(Split, SmtpNodeClientTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Bytewise" : "Whole";
                         });

TEST_P(SmtpNodeClientTest, LmtpPerRecipientReplies) {
  client_.deliver(txn({target(a_, true)}, {"<b@y.example>", "<c@y.example>"}));
  EXPECT_EQ(fake_.takeEvents(), Events{"connect node-a"});
  EXPECT_EQ(fake_.chosen, std::vector<std::string>{"node-a"});
  handshake(true, "250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
  EXPECT_EQ(fake_.take(),
            "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n");
  node("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n");
  EXPECT_EQ(fake_.take(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  EXPECT_EQ(fake_.timer_ms, SmtpNodeClient::kNodeFinalMs);
  node("250 2.0.0 <b@y.example> Saved\r\n451 4.2.0 <c@y.example> Mailbox busy\r\n");
  const std::vector<std::pair<size_t, uint16_t>> want{{0, 250}, {1, 451}};
  EXPECT_EQ(fake_.rcpt_results, want);
  // Nothing is acknowledged that was not delivered: the client retries the whole.
  EXPECT_EQ(fake_.done_count, 1u);
  EXPECT_EQ(fake_.outcome, "partial");
  EXPECT_EQ(fake_.done_reply, "451 4.4.1 Error: delivery incomplete, try again later");
  EXPECT_EQ(fake_.take(), "QUIT\r\n");
  EXPECT_FALSE(client_.kept());
  node("221 2.0.0 Bye\r\n");
  EXPECT_EQ(fake_.takeEvents(), Events{"drop"});
  EXPECT_FALSE(client_.delivering());
}

TEST_P(SmtpNodeClientTest, LmtpPartialForTheQueueKeepsEachRecipientsReply) {
  NodeTransaction t = txn({target(a_, true)}, {"<b@y.example>", "<c@y.example>", "<d@y.example>"});
  t.queue_partial = true;
  client_.deliver(std::move(t));
  fake_.takeEvents();
  handshake(true, "250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
  fake_.take();
  node("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n");
  fake_.take();
  node("250 2.0.0 <b@y.example> Saved\r\n452 4.2.2 <c@y.example> Mailbox is full\r\n"
       "550 5.1.1 <d@y.example> User doesn't exist\r\n");
  EXPECT_EQ(fake_.outcome, "partial");
  // The session queues c and reports d: it needs every recipient's reply, by index.
  ASSERT_EQ(client_.recipientReplies().size(), 3u);
  EXPECT_EQ(client_.recipientReplies()[0].substr(0, 3), "250");
  EXPECT_EQ(client_.recipientReplies()[1], "452 4.2.2 <c@y.example> Mailbox is full");
  EXPECT_EQ(client_.recipientReplies()[2].substr(0, 9), "550 5.1.1");
  EXPECT_EQ(client_.attemptBackend(), "node-a");
}

TEST_P(SmtpNodeClientTest, LmtpNodeLostAfterSomeRepliesIsPartialForTheQueue) {
  NodeTransaction t = txn({target(a_, true), target(b_, true)}, {"<b@y.example>", "<c@y.example>"});
  t.queue_partial = true;
  client_.deliver(std::move(t));
  fake_.takeEvents();
  handshake(true, "250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
  fake_.take();
  node("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n");
  fake_.take();
  node("250 2.0.0 <b@y.example> Saved\r\n");
  client_.onFailed(BackendFailure::kConnect, "connection reset");
  // b has the message; c got no reply: queued by the session, no other node tried.
  EXPECT_EQ(fake_.outcome, "partial");
  EXPECT_EQ(fake_.chosen, std::vector<std::string>{"node-a"});
  ASSERT_EQ(client_.recipientReplies().size(), 2u);
  EXPECT_EQ(client_.recipientReplies()[0].substr(0, 3), "250");
  EXPECT_NE(client_.recipientReplies()[1].substr(0, 1), "2");
  EXPECT_NE(client_.recipientReplies()[1].substr(0, 1), "5");
}

TEST_P(SmtpNodeClientTest, LmtpEveryRecipientAccepted) {
  client_.deliver(txn({target(a_, true)}, {"<b@y.example>", "<c@y.example>"}));
  handshake(true, "250 PIPELINING\r\n");
  fake_.take();
  node("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n");
  fake_.take();
  node("250 2.0.0 Saved\r\n");
  EXPECT_EQ(fake_.done_count, 0u) << "LMTP: one reply per recipient";
  node("250 2.0.0 Saved\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
  EXPECT_EQ(fake_.done_reply, "250 2.0.0 Ok: delivered as S1-1");
  EXPECT_TRUE(client_.kept());
}

TEST_P(SmtpNodeClientTest, SmtpWithPipeliningSendsTheEnvelopeInOneWrite) {
  NodeTransaction t = txn({target(a_, false)}, {"<b@y.example>", "<c@y.example>"});
  t.body_8bit = true;
  client_.deliver(std::move(t));
  handshake(false, "250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n");
  EXPECT_EQ(fake_.sends, 1u);
  EXPECT_EQ(
      fake_.take(),
      "MAIL FROM:<a@x.example> SIZE=18 BODY=8BITMIME\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\n"
      "DATA\r\n");
  node("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(fake_.take(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  node("250 2.0.0 Ok: queued as 4F2\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
  EXPECT_EQ(fake_.done_reply, "250 2.0.0 Ok: delivered as S1-1");
  EXPECT_TRUE(fake_.rcpt_results.empty()) << "SMTP: one reply for the message";
  EXPECT_TRUE(client_.kept());
  EXPECT_EQ(fake_.timer_ms, SmtpNodeClient::kNodeIdleMs);
}

TEST_P(SmtpNodeClientTest, SmtpWithoutPipeliningSendsOneCommandAtATime) {
  client_.deliver(txn({target(a_, false)}, {"<b@y.example>", "<c@y.example>"}));
  handshake(false, "250 8BITMIME\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\n");
  node("250 2.1.0 Ok\r\n");
  EXPECT_EQ(fake_.take(), "RCPT TO:<b@y.example>\r\n");
  node("250 2.1.5 Ok\r\n");
  EXPECT_EQ(fake_.take(), "RCPT TO:<c@y.example>\r\n");
  node("250 2.1.5 Ok\r\n");
  EXPECT_EQ(fake_.take(), "DATA\r\n");
  node("354 go ahead\r\n");
  EXPECT_EQ(fake_.take(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  node("250 2.0.0 Ok\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
}

TEST_P(SmtpNodeClientTest, UsesDataEvenWhenTheNodeOffersChunking) {
  // The body always goes with DATA and dot-stuffing; BDAT is not used towards nodes.
  client_.deliver(txn({target(a_, false)}, {"<b@y.example>"}));
  handshake(false, "250-CHUNKING\r\n250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
}

TEST_P(SmtpNodeClientTest, DotStuffing) {
  client_.deliver(
      txn({target(a_, false)}, {"<b@y.example>"}, "Subject: t\r\n\r\n.hidden\r\n..two\r\nmid.dot\r\n."));
  handshake(false, "");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\n");
  node("250 Ok\r\n");
  fake_.take();
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.take(), "DATA\r\n");
  node("354 go\r\n");
  // A line starting with '.' gets one more; the last line, without CRLF, gets one.
  EXPECT_EQ(fake_.take(), "Subject: t\r\n\r\n..hidden\r\n...two\r\nmid.dot\r\n..\r\n.\r\n");
}

TEST_P(SmtpNodeClientTest, FileSpooledBodyStreamsInChunksAsTheNodeDrains) {
  // The body is read from the spool file in chunks; a line starting with '.' right at
  // a chunk boundary is still stuffed.
  MessageSpool file(64, "/tmp");
  std::string body = "Subject: big\r\n\r\n";
  while (body.size() < SmtpNodeClient::kBodyChunk - 4) body += "abcdefghijklmnopqrstuvwxyz0123456789\r\n";
  body.resize(SmtpNodeClient::kBodyChunk - 2);
  body += "\r\n.boundary\r\n";
  body += std::string(100, 'z') + "\r\n";
  file.write(body);
  ASSERT_TRUE(file.flush());
  ASSERT_TRUE(file.inFile());
  NodeTransaction t = txn({target(a_, false)}, {"<b@y.example>"});
  t.body = &file;
  client_.deliver(std::move(t));
  handshake(false, "250 PIPELINING\r\n");
  fake_.take();
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  std::string first = fake_.take();
  EXPECT_EQ(first, body.substr(0, SmtpNodeClient::kBodyChunk));
  EXPECT_TRUE(client_.delivering());
  client_.onDrained();
  EXPECT_EQ(fake_.take(), "." + body.substr(SmtpNodeClient::kBodyChunk) + ".\r\n");
  client_.onDrained();  // nothing more to send
  EXPECT_EQ(fake_.take(), "");
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
}

// A scanner's replacement (filters::MessageBody) streams like a spool file: in
// chunks, stuffed across a chunk boundary, and a last line without CRLF is ended.
TEST_P(SmtpNodeClientTest, ReplacementBodyStreamsInChunksAndIsStuffed) {
  class Body final : public filters::MessageBody {
   public:
    explicit Body(std::string s) : s_(std::move(s)) {}
    uint64_t size() const override { return s_.size(); }
    bool read(uint64_t off, size_t n, std::string* out) const override {
      out->assign(s_, static_cast<size_t>(off), n);
      return true;
    }
    std::string s_;
  };
  std::string body = "X-Modified: yes\r\nSubject: big\r\n\r\n";
  while (body.size() < SmtpNodeClient::kBodyChunk - 4) body += "abcdefghijklmnopqrstuvwxyz0123456789\r\n";
  body.resize(SmtpNodeClient::kBodyChunk - 2);
  body += "\r\n.boundary\r\nno final line end";
  auto replacement = std::make_shared<ReplacementBody>(std::make_shared<Body>(body), ReplacementBody::Async{});
  NodeTransaction t = txn({target(a_, false)}, {"<b@y.example>"});
  t.body = replacement.get();
  client_.deliver(std::move(t));
  handshake(false, "250 PIPELINING\r\n");
  fake_.take();
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(fake_.take(), body.substr(0, SmtpNodeClient::kBodyChunk));
  client_.onDrained();
  EXPECT_EQ(fake_.take(), "." + body.substr(SmtpNodeClient::kBodyChunk) + "\r\n.\r\n");
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
}

TEST_P(SmtpNodeClientTest, TemporaryGreetingMovesToTheNextTarget) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  EXPECT_EQ(fake_.takeEvents(), Events{"connect node-a"});
  client_.onConnected();
  node("421 4.3.2 node-a busy\r\n");
  EXPECT_EQ(fake_.take(), "");
  EXPECT_EQ(fake_.takeEvents(), (Events{"drop", "connect node-b"}));
  EXPECT_EQ(fake_.failures, std::vector<BackendFailure>{BackendFailure::kTempRefusal});
  EXPECT_EQ(fake_.done_count, 0u);
  handshake(false, "250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  fake_.take();
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
  EXPECT_EQ(fake_.chosen, (std::vector<std::string>{"node-a", "node-b"}));
}

TEST_P(SmtpNodeClientTest, EveryTargetFailing) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  client_.onFailed(BackendFailure::kConnect, "refused");
  EXPECT_EQ(fake_.takeEvents(), (Events{"connect node-a", "drop", "connect node-b"}));
  client_.onConnected();
  node("554 5.3.2 not accepting\r\n");
  EXPECT_EQ(fake_.outcome, "failed");
  EXPECT_EQ(fake_.done_reply, "451 4.4.1 Error: storage unavailable, try again later");
  EXPECT_FALSE(client_.delivering());
}

TEST_P(SmtpNodeClientTest, ConnectionLostBeforeDataFailsOver) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  handshake(false, "");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\n");
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.take(), "RCPT TO:<b@y.example>\r\n");
  fake_.takeEvents();
  client_.onFailed(BackendFailure::kConnect, "connection reset");
  EXPECT_EQ(fake_.takeEvents(), (Events{"drop", "connect node-b"}));
  EXPECT_EQ(fake_.done_count, 0u);
  handshake(false, "250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(fake_.take(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.outcome, "delivered");
}

TEST_P(SmtpNodeClientTest, ConnectionLostAfterTheBodyDoesNotFailOver) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  fake_.take();
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(fake_.take(), "Subject: t\r\n\r\nhi\r\n.\r\n");
  fake_.takeEvents();
  // The node may have taken the message: a second node would make a second copy.
  client_.onFailed(BackendFailure::kConnect, "connection reset");
  EXPECT_EQ(fake_.takeEvents(), Events{"drop"});
  EXPECT_EQ(fake_.outcome, "unknown");
  EXPECT_EQ(fake_.done_reply, "451 4.4.1 Error: delivery outcome unknown, try again later");
  EXPECT_FALSE(client_.delivering());
}

TEST_P(SmtpNodeClientTest, TimeoutAfterTheBodyDoesNotFailOver) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  fake_.takeEvents();
  client_.onTimeout();
  EXPECT_EQ(fake_.takeEvents(), Events{"drop"});
  EXPECT_EQ(fake_.outcome, "unknown");
}

TEST_P(SmtpNodeClientTest, TemporaryFinalReplyFailsOver) {
  // A 4xx after the end of data is an answer: the node did not take the message.
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  fake_.takeEvents();
  node("451 4.3.0 try later\r\n");
  EXPECT_EQ(fake_.takeEvents(), (Events{"drop", "connect node-b"}));
  EXPECT_EQ(fake_.done_count, 0u);
}

TEST_P(SmtpNodeClientTest, KeptConnectionCarriesTheNextTransaction) {
  client_.deliver(txn({target(a_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  fake_.take();
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  fake_.take();
  node("250 Ok\r\n");
  ASSERT_EQ(fake_.outcome, "delivered");
  ASSERT_TRUE(client_.kept());
  fake_.takeEvents();
  // The last transaction ended with its final reply: the next MAIL needs no RSET.
  NodeTransaction t = txn({target(a_, false)}, {"<d@y.example>"}, "Subject: 2\r\n\r\nagain\r\n");
  t.queue_id = "S1-2";
  client_.deliver(std::move(t));
  EXPECT_EQ(fake_.takeEvents(), Events{}) << "no new connection";
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(fake_.take(), "Subject: 2\r\n\r\nagain\r\n.\r\n");
  node("250 Ok\r\n");
  EXPECT_EQ(fake_.done_count, 2u);
  EXPECT_EQ(fake_.done_reply, "250 2.0.0 Ok: delivered as S1-2");
  // The client leaves: QUIT, then the connection is forgotten.
  client_.releaseKept();
  EXPECT_EQ(fake_.take(), "QUIT\r\n");
  EXPECT_EQ(fake_.timer_ms, SmtpNodeClient::kNodeQuitMs);
  node("221 Bye\r\n");
  EXPECT_EQ(fake_.takeEvents(), Events{"drop"});
}

TEST_P(SmtpNodeClientTest, StaleKeptConnectionIsReplacedOnce) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  node("250 Ok\r\n");
  ASSERT_TRUE(client_.kept());
  fake_.take();
  fake_.takeEvents();
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
  // The node closed the idle connection: a fresh one to the same (first) node.
  node("421 4.4.2 idle timeout\r\n");
  EXPECT_EQ(fake_.takeEvents(), (Events{"drop", "connect node-a"}));
  handshake(false, "250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
}

TEST_P(SmtpNodeClientTest, KeptConnectionIdleTimeoutQuits) {
  client_.deliver(txn({target(a_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  node("250 Ok\r\n");
  fake_.take();
  fake_.takeEvents();
  client_.onTimeout();
  EXPECT_EQ(fake_.take(), "QUIT\r\n");
  client_.onTimeout();  // no 221 in time
  EXPECT_EQ(fake_.takeEvents(), Events{"drop"});
  EXPECT_FALSE(client_.kept());
}

TEST_P(SmtpNodeClientTest, KeptConnectionToAnotherNodeIsDropped) {
  client_.deliver(txn({target(a_, false)}, {"<b@y.example>"}));
  handshake(false, "250 PIPELINING\r\n");
  node("250 Ok\r\n250 Ok\r\n354 go\r\n");
  node("250 Ok\r\n");
  fake_.take();
  fake_.takeEvents();
  client_.deliver(txn({target(b_, false)}, {"<b@y.example>"}));
  EXPECT_EQ(fake_.takeEvents(), (Events{"drop", "connect node-b"}));
}

TEST_P(SmtpNodeClientTest, Smtputf8RefusedWhenNoNodeOffersIt) {
  NodeTransaction t = txn({target(a_, false), target(b_, false)}, {"<j\xC3\xB6rg@y.example>"});
  t.smtputf8 = true;
  client_.deliver(std::move(t));
  handshake(false, "250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "") << "an internationalized address never goes to a node without SMTPUTF8";
  EXPECT_EQ(fake_.takeEvents(), (Events{"connect node-a", "drop", "connect node-b"}));
  EXPECT_TRUE(fake_.failures.empty()) << "not the node's failure";
  handshake(false, "250 8BITMIME\r\n");
  EXPECT_EQ(fake_.take(), "");
  EXPECT_EQ(fake_.outcome, "rejected");
  EXPECT_EQ(fake_.done_reply, "554 5.6.7 SMTPUTF8 is required, but no storage node offers it");
}

TEST_P(SmtpNodeClientTest, Smtputf8GoesToTheNodeThatOffersIt) {
  NodeTransaction t = txn({target(a_, false), target(b_, false)}, {"<j\xC3\xB6rg@y.example>"});
  t.smtputf8 = true;
  client_.deliver(std::move(t));
  handshake(false, "250 PIPELINING\r\n");
  fake_.takeEvents();
  handshake(false, "250-PIPELINING\r\n250 SMTPUTF8\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example> SMTPUTF8\r\nRCPT TO:<j\xC3\xB6rg@y.example>\r\nDATA\r\n");
}

TEST_P(SmtpNodeClientTest, Smtputf8WithAnAsciiEnvelopeNeedsNoSupport) {
  NodeTransaction t = txn({target(a_, false)}, {"<b@y.example>"});
  t.smtputf8 = true;
  client_.deliver(std::move(t));
  handshake(false, "250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
}

TEST_P(SmtpNodeClientTest, XclientWhenOffered) {
  NodeTransaction t = txn({target(a_, false)}, {"<b@y.example>"});
  t.user = "joe+1@x.example";
  client_.deliver(std::move(t));
  handshake(false, "250-XCLIENT ADDR PORT HELO PROTO LOGIN NAME\r\n250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(),
            "XCLIENT ADDR=192.0.2.7 PORT=4711 HELO=client.example PROTO=ESMTP LOGIN=joe+2B1@x.example\r\n");
  // XCLIENT restarts the session: the node greets again, and is greeted in the client's name.
  node("220 node ESMTP\r\n");
  EXPECT_EQ(fake_.take(), "EHLO client.example\r\n");
  node("250-node\r\n250-XCLIENT ADDR PORT HELO PROTO LOGIN NAME\r\n250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n") << "XCLIENT once";
}

TEST_P(SmtpNodeClientTest, XclientIpv6AndRefusal) {
  NodeTransaction t = txn({target(a_, false)}, {"<b@y.example>"});
  t.client_ip = "2001:db8::1";
  client_.deliver(std::move(t));
  handshake(false, "250 XCLIENT ADDR\r\n");
  EXPECT_EQ(fake_.take(), "XCLIENT ADDR=IPV6:2001:db8::1\r\n");
  node("550 5.7.0 not authorized\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\n") << "a refused XCLIENT is not a failure";
}

TEST_P(SmtpNodeClientTest, StarttlsWhenTheBackendWantsIt) {
  a_.tls = conf::TlsMode::kStarttls;
  client_.deliver(txn({target(a_, true)}, {"<b@y.example>"}));
  handshake(true, "250-STARTTLS\r\n250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "STARTTLS\r\n");
  fake_.takeEvents();
  node("220 2.0.0 Ready\r\n");
  EXPECT_EQ(fake_.takeEvents(), Events{"tls node-a"});
  client_.onTlsReady();
  EXPECT_EQ(fake_.take(), "LHLO gw.test\r\n");
  node("250-node\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
  EXPECT_EQ(fake_.take(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
}

TEST_P(SmtpNodeClientTest, PermanentRecipientRefusal) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  handshake(false, "");
  fake_.take();
  node("250 Ok\r\n");
  fake_.take();
  node("550 5.1.1 no such user\r\n");
  EXPECT_EQ(fake_.outcome, "rejected");
  EXPECT_EQ(fake_.done_reply, "550 5.1.1 Storage refused the recipient <b@y.example>");
  EXPECT_EQ(fake_.take(), "QUIT\r\n") << "no other node would take it";
}

TEST_P(SmtpNodeClientTest, MalformedReplyIsAProtocolFailure) {
  client_.deliver(txn({target(a_, false), target(b_, false)}, {"<b@y.example>"}));
  client_.onConnected();
  node("220 hi\nthere\r\n");
  EXPECT_EQ(fake_.failures, std::vector<BackendFailure>{BackendFailure::kProtocol});
  EXPECT_EQ(fake_.takeEvents(), (Events{"connect node-a", "drop", "connect node-b"}));
}

TEST_P(SmtpNodeClientTest, UnresolvableTargetIsSkipped) {
  DeliveryTarget bad = target(a_, false);
  bad.error = "Name or service not known";
  client_.deliver(txn({bad, target(b_, false)}, {"<b@y.example>"}));
  EXPECT_EQ(fake_.takeEvents(), Events{"connect node-b"});
  EXPECT_EQ(fake_.chosen, (std::vector<std::string>{"node-a", "node-b"}));
}

}  // namespace
}  // namespace mailgate::session
