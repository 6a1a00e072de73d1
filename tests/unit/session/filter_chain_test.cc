// The chain runner against a fake session host: inline verdicts, pending then
// resume, late answers, deadlines, cancel on close, delays, and the rendering of
// verdicts in each protocol.
#include "gateway/session/filter_chain.h"

#include <gtest/gtest.h>

#include <deque>
#include <mutex>
#include <thread>

#include "gateway/session/verdict_render.h"

namespace mailgate::session {
namespace {

using filters::Action;
using filters::Resumer;
using filters::SessionFacts;
using filters::Stage;
using filters::Verdict;

class FakeHost : public ChainHost {
 public:
  uint64_t now = 1000;
  int holds = 0;
  uint64_t timer = 0;
  std::vector<std::pair<Stage, Verdict>> done;
  std::mutex mu;
  std::deque<std::pair<uint64_t, Resumer::Answer>> posted;  // the reactor's mailbox
  FilterChain* chain = nullptr;
  bool alive = true;

  uint64_t chainNow() const override { return now; }
  void chainHold() override { holds++; }
  void chainTimer(uint64_t at) override { timer = at; }
  std::shared_ptr<const Resumer::Post> chainPoster() override {
    return std::make_shared<const Resumer::Post>([this](uint64_t token, Resumer::Answer a) {
      std::lock_guard<std::mutex> g(mu);
      posted.emplace_back(token, std::move(a));
    });
  }
  void chainDone(Stage s, Verdict v) override { done.emplace_back(s, std::move(v)); }
  // The reactor drains its mailbox: answers reach the chain if the session lives.
  size_t drain() {
    std::deque<std::pair<uint64_t, Resumer::Answer>> items;
    {
      std::lock_guard<std::mutex> g(mu);
      items.swap(posted);
    }
    for (auto& [token, a] : items)
      if (alive) chain->resume(token, std::move(a));
    return items.size();
  }
};

// A filter whose answers are scripted per call.
class Scripted : public filters::Filter {
 public:
  Scripted(std::string name, uint32_t stages, std::vector<Verdict> script)
      : name_(std::move(name)), stages_(stages), script_(std::move(script)) {}
  std::string_view name() const override { return name_; }
  uint32_t stages() const override { return stages_; }
  Verdict onStage(Stage, SessionFacts&, const Resumer& r) override {
    calls++;
    last = r;
    Verdict v = calls <= script_.size() ? script_[calls - 1] : Verdict::next();
    return v;
  }
  std::chrono::milliseconds deadline() const override { return std::chrono::milliseconds(500); }
  Verdict onError() const override { return on_error; }
  void cancel() override { cancels++; }

  size_t calls = 0;
  int cancels = 0;
  Resumer last;
  Verdict on_error = Verdict::of(Action::kTempfail, "timeout");

 private:
  std::string name_;
  uint32_t stages_;
  std::vector<Verdict> script_;
};

constexpr uint32_t kAll = 0x7f;

struct ChainTest : ::testing::Test {
  FakeHost host;
  FilterChain chain{host};
  SessionFacts facts;
  ChainTest() {
    host.chain = &chain;
    facts.session_id = "s1";
  }
  Scripted* add(std::string name, uint32_t stages, std::vector<Verdict> script) {
    auto f = std::make_unique<Scripted>(std::move(name), stages, std::move(script));
    Scripted* p = f.get();
    chain.add(std::move(f));
    return p;
  }
};

TEST_F(ChainTest, EmptyChainContinuesAtOnce) {
  EXPECT_TRUE(chain.run(Stage::kConnect, facts));
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(host.done[0].second.action, Action::kContinue);
  EXPECT_FALSE(chain.busy());
}

TEST_F(ChainTest, InlineVerdictsFirstTerminalWins) {
  Scripted* a = add("a", kAll, {Verdict::next()});
  Scripted* b = add("b", kAll, {Verdict::of(Action::kReject, "listed")});
  Scripted* c = add("c", kAll, {Verdict::next()});
  EXPECT_TRUE(chain.run(Stage::kMail, facts));
  ASSERT_EQ(host.done.size(), 1u);
  const Verdict& v = host.done[0].second;
  EXPECT_EQ(host.done[0].first, Stage::kMail);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.filter, "b");
  EXPECT_EQ(v.reason, "listed");
  EXPECT_EQ(v.ref.size(), 6u);
  EXPECT_EQ(a->calls, 1u);
  EXPECT_EQ(b->calls, 1u);
  EXPECT_EQ(c->calls, 0u);
  EXPECT_EQ(host.holds, 0);
}

TEST_F(ChainTest, FiltersRunOnlyAtTheirStages) {
  Scripted* rcpt_only = add("rcpt", filters::stageBit(Stage::kRcpt), {Verdict::of(Action::kReject)});
  EXPECT_FALSE(chain.wants(Stage::kConnect));
  EXPECT_TRUE(chain.wants(Stage::kRcpt));
  chain.run(Stage::kConnect, facts);
  EXPECT_EQ(rcpt_only->calls, 0u);
  EXPECT_EQ(host.done.back().second.action, Action::kContinue);
  chain.run(Stage::kRcpt, facts);
  EXPECT_EQ(rcpt_only->calls, 1u);
  EXPECT_EQ(host.done.back().second.action, Action::kReject);
}

TEST_F(ChainTest, PendingThenResumeContinuesWithTheNextFilter) {
  Scripted* a = add("a", kAll, {Verdict::pending()});
  Scripted* b = add("b", kAll, {Verdict::next()});
  EXPECT_FALSE(chain.run(Stage::kAuth, facts));
  EXPECT_TRUE(chain.busy());
  EXPECT_EQ(host.holds, 1);
  EXPECT_EQ(host.timer, 1500u);  // now + the filter's deadline
  EXPECT_TRUE(host.done.empty());
  // The answer comes from another thread and fills the facts on the reactor.
  std::thread t([r = a->last] {
    r([](SessionFacts& f) {
      f.user = "canonical@example.org";
      return Verdict::next();
    });
  });
  t.join();
  EXPECT_EQ(host.drain(), 1u);
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(host.done[0].second.action, Action::kContinue);
  EXPECT_EQ(facts.user, "canonical@example.org");
  EXPECT_EQ(b->calls, 1u);
  EXPECT_EQ(host.timer, 0u);
  EXPECT_FALSE(chain.busy());
}

TEST_F(ChainTest, PendingThenTerminalAnswer) {
  Scripted* a = add("lookup", kAll, {Verdict::pending()});
  chain.run(Stage::kRcpt, facts);
  Verdict no = Verdict::of(Action::kReply);
  no.code = 550;
  no.enhanced = "5.1.1";
  no.text = "User unknown";
  a->last(no);
  host.drain();
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(host.done[0].second.action, Action::kReply);
  EXPECT_EQ(host.done[0].second.filter, "lookup");
  EXPECT_EQ(renderSmtp(host.done[0].second, Stage::kRcpt, "gw").line,
            "550 5.1.1 User unknown (ref " + host.done[0].second.ref + ")");
}

TEST_F(ChainTest, ResumeAfterCloseIsDroppedAndCounted) {
  Scripted* a = add("a", kAll, {Verdict::pending()});
  chain.run(Stage::kData, facts);
  const uint64_t late0 = chainStats().late_answers.load();
  const uint64_t cancelled0 = chainStats().cancelled.load();
  chain.cancel();  // the session closes
  EXPECT_EQ(a->cancels, 1);
  EXPECT_EQ(chainStats().cancelled.load(), cancelled0 + 1);
  a->last(Verdict::next());
  host.drain();
  EXPECT_TRUE(host.done.empty());
  EXPECT_EQ(chainStats().late_answers.load(), late0 + 1);
  EXPECT_FALSE(chain.busy());
}

TEST_F(ChainTest, DeadlineAppliesTheFailureActionAndDropsTheLateAnswer) {
  Scripted* a = add("slow", kAll, {Verdict::pending()});
  Scripted* b = add("b", kAll, {Verdict::next()});
  chain.run(Stage::kData, facts);
  const uint64_t timeouts0 = chainStats().timeouts.load();
  chain.onTimer(1499);  // not yet
  EXPECT_TRUE(host.done.empty());
  chain.onTimer(1500);
  EXPECT_EQ(chainStats().timeouts.load(), timeouts0 + 1);
  EXPECT_EQ(a->cancels, 1);
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(host.done[0].second.action, Action::kTempfail);
  EXPECT_EQ(host.done[0].second.filter, "slow");
  EXPECT_EQ(b->calls, 0u);
  EXPECT_EQ(renderSmtp(host.done[0].second, Stage::kData, "gw").line.substr(0, 10), "451 4.7.1 ");
  const uint64_t late0 = chainStats().late_answers.load();
  a->last(Verdict::next());
  host.drain();
  EXPECT_EQ(host.done.size(), 1u);
  EXPECT_EQ(chainStats().late_answers.load(), late0 + 1);
}

TEST_F(ChainTest, FailureActionAcceptContinues) {
  Scripted* a = add("optional", kAll, {Verdict::pending()});
  a->on_error = Verdict::next();
  Scripted* b = add("b", kAll, {Verdict::of(Action::kReject)});
  chain.run(Stage::kData, facts);
  chain.onTimer(2000);
  EXPECT_EQ(b->calls, 1u);
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(host.done[0].second.filter, "b");
}

TEST_F(ChainTest, AStaleTokenDoesNotCompleteANewerStep) {
  Scripted* a = add("a", kAll, {Verdict::pending(), Verdict::pending()});
  chain.run(Stage::kRcpt, facts);
  Resumer first = a->last;
  chain.onTimer(5000);  // deadline: tempfail
  ASSERT_EQ(host.done.size(), 1u);
  chain.run(Stage::kRcpt, facts);  // the next RCPT
  first(Verdict::of(Action::kReject));
  host.drain();
  EXPECT_EQ(host.done.size(), 1u);  // the old answer did not end the new step
  a->last(Verdict::next());
  host.drain();
  ASSERT_EQ(host.done.size(), 2u);
  EXPECT_EQ(host.done[1].second.action, Action::kContinue);
}

TEST_F(ChainTest, DelayHoldsThenContinues) {
  Verdict d = Verdict::of(Action::kDelay);
  d.delay = std::chrono::milliseconds(2000);
  add("tarpit", kAll, {d});
  Scripted* b = add("b", kAll, {Verdict::next()});
  EXPECT_FALSE(chain.run(Stage::kConnect, facts));
  EXPECT_EQ(host.holds, 1);
  EXPECT_EQ(host.timer, 3000u);
  chain.onTimer(2999);
  EXPECT_EQ(b->calls, 0u);
  chain.onTimer(3000);
  EXPECT_EQ(b->calls, 1u);
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(host.done[0].second.action, Action::kContinue);
}

TEST_F(ChainTest, HeadersAtDataOnlyAndValidated) {
  Verdict h = Verdict::of(Action::kAddHeader);
  h.header = "X-Scanned: clean";
  Verdict bad = Verdict::of(Action::kAddHeader);
  bad.header = "X-Evil: a\r\nBcc: someone";
  add("h", kAll, {h, h});
  add("bad", kAll, {bad});
  chain.run(Stage::kData, facts);
  auto hs = chain.takeHeaders();
  ASSERT_EQ(hs.size(), 1u);
  EXPECT_EQ(hs[0], "X-Scanned: clean");
  chain.run(Stage::kMail, facts);  // not at mail
  EXPECT_TRUE(chain.takeHeaders().empty());
}

TEST_F(ChainTest, ReplyTextWithCrLfIsReplacedByTheDefault) {
  Verdict v = Verdict::of(Action::kReject);
  v.text = "virus found\r\n250 2.0.0 Ok";
  add("scanner", kAll, {v});
  const uint64_t bad0 = chainStats().bad_text.load();
  chain.run(Stage::kData, facts);
  ASSERT_EQ(host.done.size(), 1u);
  EXPECT_EQ(chainStats().bad_text.load(), bad0 + 1);
  const Rendered r = renderSmtp(host.done[0].second, Stage::kData, "gw");
  EXPECT_EQ(r.line, "554 5.7.1 Rejected by policy (ref " + host.done[0].second.ref + ")");
  EXPECT_EQ(r.line.find('\n'), std::string::npos);
}

TEST(VerdictText, CleanAndBounded) {
  std::string out;
  EXPECT_TRUE(filters::cleanReplyText("Message contains Eicar-Signature", &out));
  EXPECT_FALSE(filters::cleanReplyText(std::string("a\0b", 3), &out));
  EXPECT_FALSE(filters::cleanReplyText("a\rb", &out));
  EXPECT_FALSE(filters::cleanReplyText("a\nb", &out));
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(filters::cleanReplyText(std::string(1000, 'x'), &out, 100));
  EXPECT_EQ(out.size(), 100u);
  // Not cut inside a UTF-8 sequence.
  std::string u = std::string(99, 'x') + "\xc3\xa9";
  EXPECT_TRUE(filters::cleanReplyText(u, &out, 100));
  EXPECT_EQ(out, std::string(99, 'x'));
}

TEST(VerdictText, ParseReplyLine) {
  uint16_t code = 0;
  std::string enh, text;
  ASSERT_TRUE(filters::parseReplyLine("554 5.7.1 Not accepted from your network", &code, &enh, &text));
  EXPECT_EQ(code, 554);
  EXPECT_EQ(enh, "5.7.1");
  EXPECT_EQ(text, "Not accepted from your network");
  ASSERT_TRUE(filters::parseReplyLine("451 try later", &code, &enh, &text));
  EXPECT_EQ(enh, "");
  EXPECT_EQ(text, "try later");
  EXPECT_FALSE(filters::parseReplyLine("250 ok", &code, &enh, &text));
  EXPECT_FALSE(filters::parseReplyLine("451 4.7.1 a\r\nb", &code, &enh, &text));
  ASSERT_TRUE(filters::parseReplyLine("451 5.7.1 mismatched class", &code, &enh, &text));
  EXPECT_EQ(enh, "");  // 5.x.x does not go with a 4xx reply
}

filters::Verdict verdict(Action a, std::string ref = "abc123") {
  filters::Verdict v = filters::Verdict::of(a);
  v.ref = std::move(ref);
  return v;
}

TEST(Render, Smtp) {
  EXPECT_EQ(renderSmtp(verdict(Action::kTempfail), Stage::kConnect, "mx.example").line,
            "421 4.7.0 mx.example Try again later (ref abc123)");
  EXPECT_TRUE(renderSmtp(verdict(Action::kTempfail), Stage::kConnect, "mx").close);
  EXPECT_EQ(renderSmtp(verdict(Action::kReject), Stage::kConnect, "mx").line,
            "554 5.7.1 Rejected by policy (ref abc123)");
  EXPECT_EQ(renderSmtp(verdict(Action::kTempfail), Stage::kRcpt, "mx").line.substr(0, 10), "450 4.7.1 ");
  EXPECT_EQ(renderSmtp(verdict(Action::kReject), Stage::kRcpt, "mx").line.substr(0, 10), "550 5.7.1 ");
  EXPECT_EQ(renderSmtp(verdict(Action::kTempfail), Stage::kAuth, "mx").line.substr(0, 10), "454 4.7.0 ");
  EXPECT_EQ(renderSmtp(verdict(Action::kTempfail), Stage::kData, "mx").line.substr(0, 10), "451 4.7.1 ");
  EXPECT_FALSE(renderSmtp(verdict(Action::kTempfail), Stage::kData, "mx").close);
  Rendered c = renderSmtp(verdict(Action::kClose), Stage::kMail, "mx");
  EXPECT_TRUE(c.close);
  EXPECT_EQ(c.line.substr(0, 10), "421 4.7.0 ");
  filters::Verdict own = verdict(Action::kTempfail);
  own.code = 452;
  own.enhanced = "4.5.3";
  own.text = "Too many recipients";
  EXPECT_EQ(renderSmtp(own, Stage::kRcpt, "mx").line, "452 4.5.3 Too many recipients (ref abc123)");
  own.code = 550;  // a 5xx code does not go with tempfail: the default applies
  EXPECT_EQ(renderSmtp(own, Stage::kRcpt, "mx").line.substr(0, 4), "450 ");
}

TEST(Render, Imap) {
  Rendered r = renderImap(verdict(Action::kTempfail), Stage::kConnect, "a1");
  EXPECT_TRUE(r.close);
  EXPECT_EQ(r.line, "* BYE [UNAVAILABLE] Try again later (ref abc123)");
  filters::Verdict lim = verdict(Action::kTempfail);
  lim.response_code = "LIMIT";
  lim.text = "Too many connections";
  r = renderImap(lim, Stage::kAuth, "a1");
  EXPECT_FALSE(r.close);
  EXPECT_EQ(r.line, "a1 NO [LIMIT] Too many connections (ref abc123)");
  EXPECT_EQ(renderImap(verdict(Action::kReject), Stage::kAuth, "t").line,
            "t NO [CONTACTADMIN] Rejected by policy (ref abc123)");
  r = renderImap(verdict(Action::kClose), Stage::kAuth, "t");
  EXPECT_TRUE(r.close);
  EXPECT_EQ(r.line.substr(0, 20), "* BYE [UNAVAILABLE] ");
}

TEST(Render, Pop3) {
  Rendered r = renderPop3(verdict(Action::kTempfail), Stage::kConnect);
  EXPECT_TRUE(r.close);
  EXPECT_EQ(r.line, "-ERR [SYS/TEMP] Try again later (ref abc123)");
  filters::Verdict lim = verdict(Action::kTempfail);
  lim.response_code = "IN-USE";
  EXPECT_EQ(renderPop3(lim, Stage::kAuth).line.substr(0, 14), "-ERR [IN-USE] ");
  EXPECT_EQ(renderPop3(verdict(Action::kReject), Stage::kAuth).line.substr(0, 11), "-ERR [AUTH]");
}

}  // namespace
}  // namespace mailgate::session
