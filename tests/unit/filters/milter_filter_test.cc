// The milter filter's conversation, against a scripted milter over a fake connection
// host: the commands sent at each stage, the replies waited for or not (SMFIP_NR_*),
// the verdicts, the rewritten message, and a failing milter's on_error.
#include "filters/milter_filter.h"

#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "filters/milter_codec.h"

namespace mailgate::filters {
namespace {

using namespace std::string_literals;

std::string be32(uint32_t v) {
  std::string s;
  for (int sh = 24; sh >= 0; sh -= 8) s.push_back(static_cast<char>((v >> sh) & 0xff));
  return s;
}
std::string packet(char cmd, std::string_view data = {}) {
  return be32(static_cast<uint32_t>(data.size() + 1)) + cmd + std::string(data);
}

std::string readAll(const MessageBody& b) {
  std::string out, chunk;
  for (uint64_t off = 0; off < b.size(); off += chunk.size()) {
    EXPECT_TRUE(b.read(off, 4096, &chunk));
    if (chunk.empty()) break;
    out += chunk;
  }
  return out;
}

// Jobs run when the test says so (never inside submit()).
class QueueExecutor final : public core::Executor {
 public:
  bool submit(std::function<void()> job, std::chrono::milliseconds) override {
    jobs.push_back(std::move(job));
    return true;
  }
  std::deque<std::function<void()>> jobs;
};

// A scripted milter: answers each complete command packet with respond(cmd, data).
class FakeHost final : public ConnectionHost {
 public:
  ConnectionId open(std::string_view address, std::chrono::milliseconds, ConnectionHandler* h,
                    std::string* error) override {
    (void)error;
    handler = h;
    id = ++next_id;
    // Bytes are queued while connecting; a refused attempt ends with onClosed.
    (address.find("refused") != std::string_view::npos ? refused_pending : connect_pending) = true;
    return id;
  }
  bool write(ConnectionId cid, std::string_view bytes) override {
    if (cid != id || closed) return false;
    wire.append(bytes);
    return true;
  }
  size_t queued(ConnectionId) const override { return 0; }
  void close(ConnectionId cid) override {
    if (cid == id) closed = true;
  }
  std::function<void(std::function<void()>)> poster() override {
    return [this](std::function<void()> fn) { posted.push_back(std::move(fn)); };
  }

  // Runs everything that is due until nothing moves.
  void run(QueueExecutor& ex) {
    for (bool moved = true; moved;) {
      moved = false;
      if (refused_pending) {
        refused_pending = false;
        moved = true;
        wire.clear();
        handler->onClosed(id, ConnectionEnd::kConnectFailed, "refused");
      }
      if (connect_pending) {
        connect_pending = false;
        moved = true;
        handler->onConnected(id);
      }
      while (!ex.jobs.empty()) {
        auto j = std::move(ex.jobs.front());
        ex.jobs.pop_front();
        j();
        moved = true;
      }
      while (!posted.empty()) {
        auto f = std::move(posted.front());
        posted.pop_front();
        f();
        moved = true;
      }
      while (wire.size() >= 5 && !closed) {
        const uint32_t len = (static_cast<uint32_t>(static_cast<uint8_t>(wire[0])) << 24) |
                             (static_cast<uint32_t>(static_cast<uint8_t>(wire[1])) << 16) |
                             (static_cast<uint32_t>(static_cast<uint8_t>(wire[2])) << 8) |
                             static_cast<uint8_t>(wire[3]);
        if (wire.size() < 4 + len) break;
        const char cmd = wire[4];
        const std::string data = wire.substr(5, len - 1);
        wire.erase(0, 4 + len);
        commands.push_back(std::string(1, cmd));
        if (cmd == 'A') continue;  // nor does ABORT
        if (cmd == 'D') {          // macros get no reply
          macros.push_back(data);
          continue;
        }
        const std::string reply = respond(cmd, data);
        moved = true;
        if (reply == "CLOSE") {
          closed = true;
          handler->onClosed(id, ConnectionEnd::kClosed, "");
          break;
        }
        if (!reply.empty()) handler->onData(id, reply);
      }
    }
  }

  std::function<std::string(char, const std::string&)> respond;
  ConnectionHandler* handler = nullptr;
  ConnectionId id = 0, next_id = 0;
  bool connect_pending = false, refused_pending = false, closed = false;
  std::string wire;
  std::vector<std::string> commands;
  std::vector<std::string> macros;  // the data of each D packet
  std::deque<std::function<void()>> posted;
};

struct Harness {
  explicit Harness(MilterOptions o = {}) {
    if (o.endpoints.empty()) o.endpoints = {"unix:/milter.sock"};
    o.spool_dir = ::testing::TempDir();
    o.hostname = "mx.test";
    if (o.name.empty()) o.name = "m";
    factory = std::make_unique<MilterFactory>(std::move(o));
    facts.session_id = "S1";
    facts.protocol = "smtp";
    facts.listener = "mx";
    facts.client_ip = "192.0.2.7";
    facts.client_port = 4000;
    facts.helo = "client.test";
    filter = factory->create(facts, FilterServices{nullptr, &ex, &host});
    post = std::make_shared<const Resumer::Post>(
        [this](uint64_t, Resumer::Answer a) { answer = a ? a(facts) : filter->onError(); });
  }

  // Runs a stage to its verdict.
  Verdict stage(Stage s) {
    answer.reset();
    Verdict v = filter->onStage(s, facts, Resumer(post, 1));
    if (v.action != Action::kPending) return v;
    host.run(ex);
    EXPECT_TRUE(answer.has_value()) << "no answer at " << stageName(s);
    return answer ? *answer : Verdict::of(Action::kClose, "none");
  }

  QueueExecutor ex;
  FakeHost host;
  std::unique_ptr<MilterFactory> factory;
  SessionFacts facts;
  std::unique_ptr<Filter> filter;
  std::shared_ptr<const Resumer::Post> post;
  std::optional<Verdict> answer;
};

std::string optneg(uint32_t actions, uint32_t proto) {
  return packet('O', be32(6) + be32(actions) + be32(proto));
}

constexpr uint32_t kAllActions = 0x3f;

TEST(MilterFilter, WholeSessionWithChanges) {
  Harness h;
  std::map<char, int> seen;
  h.host.respond = [&](char cmd, const std::string& data) -> std::string {
    seen[cmd]++;
    switch (cmd) {
      case 'O':
        return optneg(kAllActions, 0);
      case 'E':
        return packet('h', "X-Added\0yes\0"s) + packet('m', be32(1) + "Subject\0new subject\0"s) +
               packet('m', be32(1) + "X-Drop\0\0"s) + packet('i', be32(0) + "X-Top\0top\0"s) +
               packet('b', "new body\nline two\n") + packet('c');
      default:
        (void)data;
        return packet('c');
    }
  };
  EXPECT_EQ(h.stage(Stage::kConnect).action, Action::kContinue);
  EXPECT_EQ(h.stage(Stage::kHelo).action, Action::kContinue);
  h.facts.from = "a@example.com";
  h.facts.mail_path = "<a@example.com>";
  h.facts.authenticated = true;
  h.facts.user = "a@example.com";
  EXPECT_EQ(h.stage(Stage::kMail).action, Action::kContinue);
  h.facts.rcpt = "b@example.org";
  EXPECT_EQ(h.stage(Stage::kRcpt).action, Action::kContinue);
  ASSERT_EQ(h.host.macros.size(), 3u);
  EXPECT_EQ(h.host.macros[0],
            "Cj\0mx.test\0{daemon_name}\0mailgate\0{client_addr}\0"
            "192.0.2.7\0{client_port}\0"
            "4000\0"
            "{client_name}\0unknown\0_\0unknown [192.0.2.7]\0{if_addr}\0\0"s);
  EXPECT_EQ(h.host.macros[1],
            "M{auth_authen}\0a@example.com\0{auth_type}\0PLAIN\0i\0S1\0{mail_addr}\0a@example.com\0"s);
  EXPECT_EQ(h.host.macros[2], "R{rcpt_addr}\0b@example.org\0"s);
  h.facts.rcpts = {"<b@example.org>"};
  h.facts.message = std::make_shared<StringBody>(
      "Received: from x\r\n\tby y\r\nSubject: old\r\nX-Drop: me\r\nTo: b@example.org\r\n\r\nold body\r\n");
  Verdict v = h.stage(Stage::kData);
  EXPECT_EQ(v.action, Action::kContinue) << v.reason;
  ASSERT_TRUE(v.replacement);
  EXPECT_EQ(readAll(*v.replacement),
            "X-Top: top\r\nReceived: from x\r\n\tby y\r\nSubject: new subject\r\nTo: b@example.org\r\n"
            "X-Added: yes\r\n\r\nnew body\r\nline two\r\n");
  EXPECT_EQ(h.facts.scan_results, (std::vector<std::pair<std::string, std::string>>{{"m", "modified"}}));
  EXPECT_EQ(seen['T'], 1);
  EXPECT_EQ(seen['L'], 4);
  EXPECT_EQ(seen['N'], 1);
  EXPECT_EQ(seen['B'], 1);
  EXPECT_EQ(seen['E'], 1);
  EXPECT_EQ(seen['A'], 0);
}

TEST(MilterFilter, DeclinedStepsAreNotSentAndNoReplyIsNotAwaited) {
  Harness h;
  using namespace milter_proto;
  h.host.respond = [&](char cmd, const std::string&) -> std::string {
    if (cmd == 'O') return optneg(0, kNoHelo | kNrConnect | kNoHeaders | kNrBody | kNoEoh);
    if (cmd == 'C' || cmd == 'B') return {};  // says it will not answer
    return packet('c');
  };
  EXPECT_EQ(h.stage(Stage::kConnect).action, Action::kContinue);
  // HELO is declined: answered at once, nothing sent.
  const size_t before = h.host.commands.size();
  EXPECT_EQ(h.filter->onStage(Stage::kHelo, h.facts, Resumer(h.post, 1)).action, Action::kContinue);
  h.host.run(h.ex);
  EXPECT_EQ(h.host.commands.size(), before);
  h.facts.from = "";
  EXPECT_EQ(h.stage(Stage::kMail).action, Action::kContinue);
  h.facts.message = std::make_shared<StringBody>("Subject: s\r\n\r\n" + std::string(200000, 'x'));
  EXPECT_EQ(h.stage(Stage::kData).action, Action::kContinue);
  std::string kinds;
  for (const auto& c : h.host.commands) kinds += c;
  EXPECT_EQ(kinds.find('L'), std::string::npos);
  EXPECT_EQ(kinds.find('N'), std::string::npos);
  EXPECT_EQ(kinds.find('H'), std::string::npos);
  EXPECT_NE(kinds.find("DTBBBBDE"), std::string::npos)
      << kinds;  // 200000 octets: 4 chunks, then the macros and end of body
}

TEST(MilterFilter, RecipientRefusedAloneAndAbortBeforeTheNextMail) {
  Harness h;
  h.host.respond = [&](char cmd, const std::string& data) -> std::string {
    if (cmd == 'O') return optneg(0, 0);
    if (cmd == 'R' && data.find("bad@") != std::string::npos) return packet('y', "550 5.1.1 no such user\0"s);
    return packet('c');
  };
  h.stage(Stage::kConnect);
  h.facts.from = "a@example.com";
  EXPECT_EQ(h.stage(Stage::kMail).action, Action::kContinue);
  h.facts.rcpt = "bad@example.org";
  Verdict v = h.stage(Stage::kRcpt);
  EXPECT_EQ(v.action, Action::kReply);
  EXPECT_EQ(v.code, 550);
  EXPECT_EQ(v.enhanced, "5.1.1");
  EXPECT_EQ(v.text, "no such user");
  h.facts.rcpt = "good@example.org";
  EXPECT_EQ(h.stage(Stage::kRcpt).action, Action::kContinue);
  // The transaction ends before DATA (RSET): the next MAIL is preceded by ABORT.
  EXPECT_EQ(h.stage(Stage::kMail).action, Action::kContinue);
  std::string kinds;
  for (const auto& c : h.host.commands) kinds += c;
  EXPECT_NE(kinds.find("ADM"), std::string::npos) << kinds;
}

TEST(MilterFilter, DiscardQuarantineAndRefusalAtTheEnd) {
  for (const auto& [reply, action, code, outcome] :
       std::vector<std::tuple<std::string, Action, int, std::string>>{
           {packet('d'), Action::kReply, 250, "discarded"},
           {packet('q', "bad\0"s) + packet('c'), Action::kTempfail, 0, "quarantined"},
           {packet('r'), Action::kReject, 0, "rejected"},
           {packet('t'), Action::kTempfail, 0, "rejected"}}) {
    Harness h;
    h.host.respond = [&, r = reply](char cmd, const std::string&) -> std::string {
      if (cmd == 'O') return optneg(kAllActions, 0);
      return cmd == 'E' ? r : packet('c');
    };
    h.stage(Stage::kConnect);
    h.facts.from = "a@example.com";
    h.stage(Stage::kMail);
    h.facts.message = std::make_shared<StringBody>("Subject: s\r\n\r\nbody\r\n");
    Verdict v = h.stage(Stage::kData);
    EXPECT_EQ(v.action, action) << v.reason;
    EXPECT_EQ(v.code, code);
    ASSERT_EQ(h.facts.scan_results.size(), 1u);
    EXPECT_EQ(h.facts.scan_results[0].second, outcome);
  }
  // With a quarantine store: the quarantine verdict.
  MilterOptions o;
  o.quarantine_store = true;
  Harness h(o);
  h.host.respond = [&](char cmd, const std::string&) -> std::string {
    if (cmd == 'O') return optneg(kAllActions, 0);
    return cmd == 'E' ? packet('q', "bad\0"s) + packet('c') : packet('c');
  };
  h.stage(Stage::kConnect);
  h.stage(Stage::kMail);
  h.facts.message = std::make_shared<StringBody>("Subject: s\r\n\r\nbody\r\n");
  EXPECT_EQ(h.stage(Stage::kData).action, Action::kQuarantine);
}

TEST(MilterFilter, FailureAppliesOnErrorForTheRestOfTheSession) {
  for (FailureAction on_error : {FailureAction::kTempfail, FailureAction::kAccept}) {
    MilterOptions o;
    o.on_error = on_error;
    Harness h(o);
    h.host.respond = [&](char cmd, const std::string&) -> std::string {
      if (cmd == 'O') return optneg(0, 0);
      if (cmd == 'M') return "\0\0\0\0"s;  // an empty packet: a protocol error
      return packet('c');
    };
    EXPECT_EQ(h.stage(Stage::kConnect).action, Action::kContinue);
    const Action want = on_error == FailureAction::kAccept ? Action::kContinue : Action::kTempfail;
    EXPECT_EQ(h.stage(Stage::kMail).action, want);
    EXPECT_TRUE(h.host.closed);
    // Not asked again: later stages answer at once.
    const size_t before = h.host.commands.size();
    EXPECT_EQ(h.filter->onStage(Stage::kRcpt, h.facts, Resumer(h.post, 1)).action, want);
    EXPECT_EQ(h.host.commands.size(), before);
  }
}

TEST(MilterFilter, MilterClosingMidBodyIsAFailure) {
  Harness h;
  h.host.respond = [&](char cmd, const std::string&) -> std::string {
    if (cmd == 'O') return optneg(0, 0);
    return cmd == 'B' ? "CLOSE" : packet('c');
  };
  h.stage(Stage::kConnect);
  h.stage(Stage::kMail);
  h.facts.message = std::make_shared<StringBody>("Subject: s\r\n\r\nbody\r\n");
  Verdict v = h.stage(Stage::kData);
  EXPECT_EQ(v.action, Action::kTempfail);
  EXPECT_NE(v.reason.find("connection ended"), std::string::npos) << v.reason;
  EXPECT_EQ(h.facts.scan_results,
            (std::vector<std::pair<std::string, std::string>>{{"m", "error(unavailable)"}}));
}

TEST(MilterFilter, OpenBreakerSkipsTheMilterForTheSession) {
  MilterOptions o;
  o.on_error = FailureAction::kAccept;
  o.breaker = std::make_shared<CircuitBreaker>(1, std::chrono::minutes(1));
  o.endpoints = {"tcp:127.0.0.1:1/refused"};
  Harness h(o);
  h.host.respond = [&](char, const std::string&) -> std::string { return packet('c'); };
  EXPECT_EQ(h.stage(Stage::kConnect).action, Action::kContinue);  // no endpoint: on_error accept
  EXPECT_EQ(o.breaker->state(), CircuitBreaker::State::kOpen);
  Harness h2(o);  // the next session: skipped at once, no connection
  EXPECT_EQ(h2.filter->onStage(Stage::kConnect, h2.facts, Resumer(h2.post, 1)).action, Action::kContinue);
  EXPECT_EQ(h2.host.next_id, 0u);
  h2.facts.message = std::make_shared<StringBody>("Subject: s\r\n\r\nbody\r\n");
  EXPECT_EQ(h2.filter->onStage(Stage::kData, h2.facts, Resumer(h2.post, 1)).action, Action::kContinue);
  EXPECT_EQ(h2.facts.scan_results,
            (std::vector<std::pair<std::string, std::string>>{{"m", "skipped(breaker)"}}));
}

TEST(MilterFilter, NextEndpointWhenTheFirstCannotBeConnectedTo) {
  MilterOptions o;
  o.endpoints = {"tcp:127.0.0.1:1/refused", "unix:/milter.sock"};
  Harness h(o);
  h.host.respond = [&](char cmd, const std::string&) -> std::string {
    return cmd == 'O' ? optneg(0, 0) : packet('c');
  };
  EXPECT_EQ(h.stage(Stage::kConnect).action, Action::kContinue);
  std::string kinds;
  for (const auto& c : h.host.commands) kinds += c;
  EXPECT_EQ(kinds, "ODC");
}

}  // namespace
}  // namespace mailgate::filters
