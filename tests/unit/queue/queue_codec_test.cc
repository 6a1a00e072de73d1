#include <gtest/gtest.h>

#include <string>

#include "gateway/queue/queue_store.h"

namespace mailgate::queue {
namespace {

QueueEntry sample() {
  QueueEntry e;
  e.id = "s1a2b3-7";
  e.created_ms = 1700000000123;
  e.next_ms = 1700000060000;
  e.attempts = 3;
  e.mail_from = "<alice@example.org>";
  e.rcpts.push_back({"<dave@example.com>", RcptState::kDelivered, "250 2.0.0 Ok: saved", 1700000000200});
  e.rcpts.push_back(
      {"<frank@example.com>", RcptState::kPending, "451 4.2.0 <frank> mailbox busy", 1700000000300});
  e.rcpts.push_back({"<j\xc3\xb6rg@b\xc3\xbc.example>", RcptState::kFailed, "", 0});
  e.rcpts.push_back({"<\"odd name\"@example.com>", RcptState::kReported, "550 5.1.1 no\r\nsuch %user", 5});
  e.client_ip = "192.0.2.7";
  e.helo = "client.example.org";
  e.user = "alice";
  e.listener = "submission";
  e.session_id = "s1a2b3";
  e.message_id = "<abc@example.org>";
  e.smtputf8 = true;
  e.body_8bit = true;
  e.dsn = false;
  e.size = 123456;
  e.lease_owner = "gw1:4242 with space";
  e.lease_until_ms = 1700000090000;
  return e;
}

void expectEqual(const QueueEntry& a, const QueueEntry& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.created_ms, b.created_ms);
  EXPECT_EQ(a.next_ms, b.next_ms);
  EXPECT_EQ(a.attempts, b.attempts);
  EXPECT_EQ(a.mail_from, b.mail_from);
  ASSERT_EQ(a.rcpts.size(), b.rcpts.size());
  for (size_t i = 0; i < a.rcpts.size(); ++i) {
    EXPECT_EQ(a.rcpts[i].addr, b.rcpts[i].addr);
    EXPECT_EQ(a.rcpts[i].state, b.rcpts[i].state);
    EXPECT_EQ(a.rcpts[i].reply, b.rcpts[i].reply);
    EXPECT_EQ(a.rcpts[i].updated_ms, b.rcpts[i].updated_ms);
  }
  EXPECT_EQ(a.client_ip, b.client_ip);
  EXPECT_EQ(a.helo, b.helo);
  EXPECT_EQ(a.user, b.user);
  EXPECT_EQ(a.listener, b.listener);
  EXPECT_EQ(a.session_id, b.session_id);
  EXPECT_EQ(a.message_id, b.message_id);
  EXPECT_EQ(a.smtputf8, b.smtputf8);
  EXPECT_EQ(a.body_8bit, b.body_8bit);
  EXPECT_EQ(a.dsn, b.dsn);
  EXPECT_EQ(a.size, b.size);
  EXPECT_EQ(a.lease_owner, b.lease_owner);
  EXPECT_EQ(a.lease_until_ms, b.lease_until_ms);
}

TEST(QueueCodec, RoundTrip) {
  const QueueEntry e = sample();
  const std::string text = encodeQueueMeta(e);
  QueueEntry d;
  ASSERT_TRUE(decodeQueueMeta(text, &d)) << text;
  expectEqual(e, d);
  EXPECT_EQ(encodeQueueMeta(d), text);
}

TEST(QueueCodec, RoundTripMinimal) {
  QueueEntry e;
  e.id = "x";
  e.mail_from = "<>";
  e.rcpts.push_back({"<a@b>", RcptState::kPending, "", 0});
  e.dsn = true;
  QueueEntry d;
  ASSERT_TRUE(decodeQueueMeta(encodeQueueMeta(e), &d));
  expectEqual(e, d);
}

TEST(QueueCodec, EncodedIsLinesOfPrintableAscii) {
  const std::string text = encodeQueueMeta(sample());
  for (unsigned char c : text) EXPECT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7f)) << int(c);
  EXPECT_EQ(text.substr(text.size() - 2), "\n\n");
  EXPECT_NE(text.find("\nrcpt: <frank@example.com> pending 1700000000300 451 4.2.0 <frank> mailbox busy\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("\nrcpt: <\"odd%20name\"@example.com> reported 5 550 5.1.1 no%0D%0Asuch %25user\n"),
            std::string::npos)
      << text;
}

// Replaces the first occurrence of `from` in the encoded sample.
std::string mutate(const std::string& from, const std::string& to) {
  std::string text = encodeQueueMeta(sample());
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(QueueCodec, RejectsMalformed) {
  QueueEntry d;
  const std::string good = encodeQueueMeta(sample());
  EXPECT_FALSE(decodeQueueMeta("", &d));
  EXPECT_FALSE(decodeQueueMeta("mailgate-queue: 1\n", &d));
  EXPECT_FALSE(decodeQueueMeta("mailgate-queue: 1\n\n", &d));  // nothing
  // Every truncation is rejected.
  for (size_t n = 0; n < good.size(); ++n) EXPECT_FALSE(decodeQueueMeta(good.substr(0, n), &d)) << n;
  EXPECT_FALSE(decodeQueueMeta(good + "x", &d));   // trailing data
  EXPECT_FALSE(decodeQueueMeta(good + "\n", &d));  // trailing data
  const char* const bad[][2] = {
      {"mailgate-queue: 1", "mailgate-queue: 2"},                        // another version
      {"id: s1a2b3-7", "id: .hidden"},                                   // not a queue id
      {"id: s1a2b3-7", "id: a/b"},                                       //
      {"id: s1a2b3-7", "idx: s1a2b3-7"},                                 // unknown key (and no id)
      {"created_ms: 1700000000123", "created_ms: -1"},                   // negative
      {"created_ms: 1700000000123", "created_ms: 01"},                   // leading zero
      {"created_ms: 1700000000123", "created_ms: 9223372036854775808"},  // > int64
      {"created_ms: 1700000000123", "created_ms: "},                     // empty
      {"attempts: 3", "attempts: 4294967296"},                           // > uint32
      {"size: 123456", "size: 18446744073709551616"},                    // > uint64
      {"size: 123456", "size: 12a"},
      {"smtputf8: 1", "smtputf8: yes"},
      {"dsn: 0", "dsn: 2"},
      {"helo: client", "helo:client"},                                          // no ": "
      {"helo: client", "helo: cli%2"},                                          // truncated escape
      {"helo: client", "helo: cli%zzent"},                                      // bad escape
      {"helo: client", "helo: cli\tent"},                                       // raw control
      {"helo: client", "helo: cli\xc3\xa9nt"},                                  // raw 8-bit
      {"rcpt: <dave@example.com> delivered", "rcpt: <dave@example.com> gone"},  // state
      {"rcpt: <dave@example.com> delivered 1700000000200", "rcpt: <dave@example.com> delivered x"},
      {"rcpt: <dave@example.com> delivered 1700000000200 250 2.0.0 Ok: saved", "rcpt: <dave@example.com>"},
      {"rcpt: <dave@example.com> delivered 1700000000200 250 2.0.0 Ok: saved",
       "rcpt: <dave@example.com> delivered 1700000000200"},                  // no reply field separator
      {"rcpt: <dave@example.com>", "rcpt:  "},                               // empty address
      {"lease_owner: gw1:4242 with space\n", ""},                            // missing key
      {"listener: submission\n", "listener: submission\nlistener: smtp\n"},  // duplicate
      {"\n\n", "\r\n\n"},                                                    // CR
  };
  for (const auto& b : bad) EXPECT_FALSE(decodeQueueMeta(mutate(b[0], b[1]), &d)) << b[0] << " -> " << b[1];
  // No recipient at all.
  QueueEntry e = sample();
  e.rcpts.clear();
  EXPECT_FALSE(decodeQueueMeta(encodeQueueMeta(e), &d));
  // An id the encoder was given but the store would not take.
  e = sample();
  e.id = std::string(65, 'a');
  EXPECT_FALSE(decodeQueueMeta(encodeQueueMeta(e), &d));
}

TEST(QueueCodec, KeysInAnyOrder) {
  std::string text = mutate("id: s1a2b3-7\n", "");
  text.insert(text.size() - 1, "id: s1a2b3-7\n");
  QueueEntry d;
  ASSERT_TRUE(decodeQueueMeta(text, &d)) << text;
  EXPECT_EQ(d.id, "s1a2b3-7");
}

TEST(QueueIds, Valid) {
  EXPECT_TRUE(validQueueId("a"));
  EXPECT_TRUE(validQueueId("s1A-2_b.dsn1"));
  EXPECT_TRUE(validQueueId(std::string(64, 'z')));
  EXPECT_FALSE(validQueueId(""));
  EXPECT_FALSE(validQueueId(std::string(65, 'z')));
  EXPECT_FALSE(validQueueId("."));
  EXPECT_FALSE(validQueueId(".."));
  EXPECT_FALSE(validQueueId(".tmp-x"));
  EXPECT_FALSE(validQueueId("a/b"));
  EXPECT_FALSE(validQueueId("a~b"));
  EXPECT_FALSE(validQueueId("a b"));
  EXPECT_FALSE(validQueueId(std::string("a\0b", 3)));
}

TEST(QueueRcptState, Names) {
  for (RcptState s : {RcptState::kPending, RcptState::kDelivered, RcptState::kFailed, RcptState::kReported}) {
    RcptState back = RcptState::kPending;
    ASSERT_TRUE(parseRcptState(rcptStateName(s), &back));
    EXPECT_EQ(back, s);
  }
  RcptState x;
  EXPECT_FALSE(parseRcptState("Pending", &x));
  EXPECT_FALSE(parseRcptState("", &x));
}

TEST(QueueEntryCount, FinishedOnlyWhenNothingOpen) {
  QueueEntry e = sample();
  EXPECT_EQ(e.count(RcptState::kDelivered), 1u);
  EXPECT_EQ(e.count(RcptState::kPending), 1u);
  EXPECT_EQ(e.count(RcptState::kFailed), 1u);
  EXPECT_EQ(e.count(RcptState::kReported), 1u);
  EXPECT_FALSE(e.finished());
  e.rcpts[1].state = RcptState::kDelivered;
  EXPECT_FALSE(e.finished());
  e.rcpts[2].state = RcptState::kReported;
  EXPECT_TRUE(e.finished());
}

}  // namespace
}  // namespace mailgate::queue
