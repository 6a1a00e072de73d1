// ContentChain: order, first refusal wins, reply classes enforced, exceptions are
// temporary failures. The hooks here are test doubles of the hook interface.
#include "filters/content_hook.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace mailgate::filters {
namespace {

class StringBody final : public MessageBody {
 public:
  explicit StringBody(std::string s) : s_(std::move(s)) {}
  uint64_t size() const override { return s_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    *out = off < s_.size() ? s_.substr(off, n) : std::string();
    return true;
  }

 private:
  std::string s_;
};

class FixedHook final : public ContentHook {
 public:
  FixedHook(std::string name, Decision d, int* calls) : name_(std::move(name)), d_(std::move(d)), calls_(calls) {}
  std::string_view name() const override { return name_; }
  Decision inspect(const MessageInfo&, const MessageBody& body) override {
    ++*calls_;
    std::string head;
    body.read(0, 7, &head);
    if (head == "THROW!!") throw std::runtime_error("scanner unreachable");
    return d_;
  }

 private:
  std::string name_;
  Decision d_;
  int* calls_;
};

Decision decide(Action a, std::string reply = {}) {
  Decision d;
  d.action = a;
  d.reply = std::move(reply);
  d.reason = "test";
  return d;
}

TEST(ContentChain, EmptyAccepts) {
  ContentChain c;
  EXPECT_TRUE(c.empty());
  EXPECT_EQ(c.run({}, StringBody("x")).action, Action::kAccept);
}

TEST(ContentChain, FirstRefusalWinsAndStops) {
  int a = 0, b = 0, d = 0;
  ContentChain c;
  c.add(std::make_unique<FixedHook>("av", decide(Action::kAccept), &a));
  c.add(std::make_unique<FixedHook>("dlp", decide(Action::kReject, "550 5.7.1 Secret found"), &b));
  c.add(std::make_unique<FixedHook>("milter", decide(Action::kTempFail), &d));
  Decision r = c.run({}, StringBody("Subject: x\r\n\r\n"));
  EXPECT_EQ(r.action, Action::kReject);
  EXPECT_EQ(r.hook, "dlp");
  EXPECT_EQ(r.reply, "550 5.7.1 Secret found");
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 1);
  EXPECT_EQ(d, 0);
}

TEST(ContentChain, ReplyClassFollowsTheAction) {
  int n = 0;
  ContentChain c;
  c.add(std::make_unique<FixedHook>("weird", decide(Action::kReject, "250 2.0.0 fine"), &n));
  EXPECT_EQ(c.run({}, StringBody("x")).reply, "554 5.7.1 Message content rejected");
  ContentChain t;
  t.add(std::make_unique<FixedHook>("weird", decide(Action::kTempFail, "554 5.0.0 no"), &n));
  EXPECT_EQ(t.run({}, StringBody("x")).reply, "451 4.7.1 Message could not be checked, try again later");
}

TEST(ContentChain, ExceptionIsTemporaryFailure) {
  int n = 0;
  ContentChain c;
  c.add(std::make_unique<FixedHook>("av", decide(Action::kAccept), &n));
  Decision r = c.run({}, StringBody("THROW!! body"));
  EXPECT_EQ(r.action, Action::kTempFail);
  EXPECT_EQ(r.hook, "av");
  EXPECT_EQ(r.reply[0], '4');
  EXPECT_NE(r.reason.find("scanner unreachable"), std::string::npos);
}

}  // namespace
}  // namespace mailgate::filters
