#include "gateway/codec/pop3_command.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using namespace std::string_literals;

const char* verbName(Pop3Verb v) {
  switch (v) {
    case Pop3Verb::kUnknown:
      return "UNKNOWN";
    case Pop3Verb::kCapa:
      return "CAPA";
    case Pop3Verb::kStls:
      return "STLS";
    case Pop3Verb::kUser:
      return "USER";
    case Pop3Verb::kPass:
      return "PASS";
    case Pop3Verb::kAuth:
      return "AUTH";
    case Pop3Verb::kQuit:
      return "QUIT";
    case Pop3Verb::kNoop:
      return "NOOP";
    case Pop3Verb::kOther:
      return "OTHER";
  }
  return "?";
}

struct Event {
  std::string text;
  size_t end;
  bool operator==(const Event& o) const { return text == o.text && end == o.end; }
};

std::ostream& operator<<(std::ostream& os, const Event& e) {
  return os << "{" << e.text << " @" << e.end << "}";
}

std::string describe(const Pop3CommandParser& p, Pop3Status s) {
  switch (s) {
    case Pop3Status::kNeedMore:
      return "?";
    case Pop3Status::kCommand: {
      const Pop3Command& c = p.command();
      EXPECT_TRUE(p.ownsView(c.verb_text));
      std::string out = "C " + std::string(verbName(c.verb)) + " " + std::string(c.verb_text);
      for (uint32_t i = 0; i < c.argc; ++i) {
        EXPECT_TRUE(p.ownsView(c.args[i]));
        out += " [" + std::string(c.args[i]) + "]";
      }
      return out;
    }
    case Pop3Status::kSaslLine:
      EXPECT_TRUE(p.ownsView(p.saslLine()));
      return "S [" + std::string(p.saslLine()) + "]";
    case Pop3Status::kError:
      return "E " + std::string(p.errorText());
    case Pop3Status::kFatal:
      return "F " + std::string(p.errorText());
  }
  return "!";
}

// Acts as the session: SASL lines after AUTH <mech> without initial response (two for
// LOGIN, one otherwise, "*" cancels); after STLS, reset() and drop everything that followed.
std::vector<Event> run(const std::string& in, const std::vector<size_t>& cuts, Pop3Limits lim = {}) {
  Pop3CommandParser p(lim);
  std::vector<Event> ev;
  int sasl_left = 0;
  size_t pos = 0;
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  size_t chunk_start = 0;
  for (size_t b : bounds) {
    std::string_view rest(in.data() + chunk_start, b - chunk_start);
    chunk_start = b;
    for (;;) {
      const bool was_empty = rest.empty();
      const Pop3Feed f = p.feed(rest);
      EXPECT_LE(f.consumed, rest.size());
      if (f.consumed > rest.size()) return ev;
      rest.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == Pop3Status::kNeedMore) {
        EXPECT_TRUE(rest.empty());
        break;
      }
      EXPECT_FALSE(was_empty);
      EXPECT_GT(f.consumed, 0u);
      ev.push_back({describe(p, f.status), pos});
      switch (f.status) {
        case Pop3Status::kFatal:
          return ev;
        case Pop3Status::kCommand:
          if (p.command().verb == Pop3Verb::kStls) {
            p.reset();
            return ev;
          }
          if (p.command().verb == Pop3Verb::kAuth && p.command().argc == 1) {
            sasl_left = p.command().args[0] == "LOGIN" ? 2 : 1;
            p.expectSaslLine();
            --sasl_left;
          }
          break;
        case Pop3Status::kSaslLine:
          if (p.saslLine() != "*" && sasl_left > 0) {
            p.expectSaslLine();
            --sasl_left;
          }
          break;
        case Pop3Status::kError:
          sasl_left = 0;
          break;
        case Pop3Status::kNeedMore:
          break;
      }
      EXPECT_FALSE(p.hasPending());
      if (rest.empty()) break;
    }
  }
  return ev;
}

std::vector<std::string> texts(const std::vector<Event>& ev) {
  std::vector<std::string> out;
  for (const auto& e : ev) out.push_back(e.text);
  return out;
}

struct Vec {
  std::string name;
  std::string in;
  std::vector<std::string> want;
  bool small = false;
};

Pop3Limits smallLimits() {
  Pop3Limits l;
  l.max_line = 32;
  l.max_sasl_line = 48;
  return l;
}

void checkVector(const Vec& v) {
  SCOPED_TRACE(v.name);
  const Pop3Limits lim = v.small ? smallLimits() : Pop3Limits{};
  const auto whole = run(v.in, {}, lim);
  EXPECT_EQ(texts(whole), v.want);
  std::vector<size_t> every;
  for (size_t i = 1; i < v.in.size(); ++i) every.push_back(i);
  EXPECT_EQ(run(v.in, every, lim), whole) << "byte by byte";
  for (size_t k = 0; k <= v.in.size(); ++k) {
    EXPECT_EQ(run(v.in, {k}, lim), whole) << "split at " << k;
  }
  std::mt19937 rng(4242);
  for (int r = 0; r < 30; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < v.in.size(); ++i) {
      if (rng() % 4 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(v.in, cuts, lim), whole) << "random split " << r;
  }
}

std::vector<Vec> vectors() {
  return {
      {"capa", "CAPA\r\n", {"C CAPA CAPA"}},
      {"stls lower", "stls\r\n", {"C STLS stls"}},
      {"quit", "QUIT\r\n", {"C QUIT QUIT"}},
      {"noop", "NoOp\r\n", {"C NOOP NoOp"}},
      {"user", "USER bob@example.org\r\n", {"C USER USER [bob@example.org]"}},
      {"user 8bit", "user j\xc3\xbcrgen\r\n", {"C USER user [j\xc3\xbcrgen]"}},
      {"pass with spaces", "PASS  my secret \r\n", {"C PASS PASS [ my secret ]"}},
      {"user then pass", "USER bob\r\nPASS pw\r\n", {"C USER USER [bob]", "C PASS PASS [pw]"}},
      {"auth list", "AUTH\r\n", {"C AUTH AUTH"}},
      {"auth initial response", "AUTH PLAIN AGJvYgBwdw==\r\n", {"C AUTH AUTH [PLAIN] [AGJvYgBwdw==]"}},
      {"auth empty initial response", "AUTH PLAIN =\r\n", {"C AUTH AUTH [PLAIN] [=]"}},
      {"auth sasl",
       "AUTH PLAIN\r\nAGJvYgBwdw==\r\nQUIT\r\n",
       {"C AUTH AUTH [PLAIN]", "S [AGJvYgBwdw==]", "C QUIT QUIT"}},
      {"auth login", "AUTH LOGIN\r\nYm9i\r\ncHc=\r\n", {"C AUTH AUTH [LOGIN]", "S [Ym9i]", "S [cHc=]"}},
      {"auth cancel", "AUTH PLAIN\r\n*\r\nCAPA\r\n", {"C AUTH AUTH [PLAIN]", "S [*]", "C CAPA CAPA"}},
      {"sasl bare LF",
       "AUTH PLAIN\r\nabc\nCAPA\r\n",
       {"C AUTH AUTH [PLAIN]", "E Line ends with bare LF.", "C CAPA CAPA"}},
      {"sasl NUL",
       "AUTH PLAIN\r\na\0c\r\nCAPA\r\n"s,
       {"C AUTH AUTH [PLAIN]", "E NUL in command line.", "C CAPA CAPA"}},
      {"other", "RETR 1\r\n", {"C OTHER RETR [1]"}},
      {"other three letters", "TOP 1 10\r\n", {"C OTHER TOP [1] [10]"}},
      {"four args", "XTND a b c d\r\n", {"C OTHER XTND [a] [b] [c] [d]"}},
      {"five args", "XTND a b c d e\r\nQUIT\r\n", {"E Invalid arguments.", "C QUIT QUIT"}},
      {"capa with arg", "CAPA x\r\n", {"E Invalid arguments."}},
      {"user without arg", "USER\r\n", {"E Invalid arguments."}},
      {"user two args", "USER a b\r\n", {"E Invalid arguments."}},
      {"pass empty", "PASS \r\n", {"E Invalid arguments."}},
      {"pass missing", "PASS\r\n", {"E Invalid arguments."}},
      {"auth three args", "AUTH PLAIN x y\r\n", {"E Invalid arguments."}},
      {"double space", "USER  bob\r\n", {"E Invalid arguments."}},
      {"trailing space", "USER bob \r\n", {"E Invalid arguments."}},
      {"control char", "USER b\tob\r\n", {"E Invalid arguments."}},
      {"verb too long", "USERS bob\r\nQUIT\r\n", {"E Invalid command.", "C QUIT QUIT"}},
      {"verb too short", "US bob\r\n", {"E Invalid command."}},
      {"verb too short at end", "US\r\n", {"E Invalid command."}},
      {"verb digits", "US3R bob\r\n", {"E Invalid command."}},
      {"empty line", "\r\n", {"E Empty command."}},
      {"bare LF", "CAPA\nQUIT\r\n", {"E Line ends with bare LF.", "C QUIT QUIT"}},
      {"lone LF", "\n", {"E Line ends with bare LF."}},
      {"bare CR", "CA\rPA\r\nQUIT\r\n", {"E Invalid command.", "C QUIT QUIT"}},
      {"CR inside", "CAPA\rX\r\nQUIT\r\n", {"E Bare CR in command line.", "C QUIT QUIT"}},
      {"NUL", "CA\0PA\r\nQUIT\r\n"s, {"E NUL in command line.", "C QUIT QUIT"}},
      {"NUL in pass", "PASS a\0b\r\nQUIT\r\n"s, {"E NUL in command line.", "C QUIT QUIT"}},
      // limits: max_line 32, max_sasl_line 48 (CRLF included)
      {"line at limit",
       "USER " + std::string(25, 'u') + "\r\n",
       {"C USER USER [" + std::string(25, 'u') + "]"},
       true},
      {"line over limit",
       "USER " + std::string(26, 'u') + "\r\nQUIT\r\n",
       {"E Line too long.", "C QUIT QUIT"},
       true},
      {"line at 4x limit",
       "PASS " + std::string(121, 'p') + "\r\nQUIT\r\n",
       {"E Line too long.", "C QUIT QUIT"},
       true},
      {"line over 4x limit", "PASS " + std::string(200, 'p'), {"F Line too long."}, true},
      {"sasl line at limit",
       "AUTH PLAIN\r\n" + std::string(46, 'A') + "\r\n",
       {"C AUTH AUTH [PLAIN]", "S [" + std::string(46, 'A') + "]"},
       true},
      {"sasl line over limit",
       "AUTH PLAIN\r\n" + std::string(47, 'A') + "\r\nQUIT\r\n",
       {"C AUTH AUTH [PLAIN]", "E Line too long.", "C QUIT QUIT"},
       true},
  };
}

TEST(Pop3Command, Vectors) {
  for (const Vec& v : vectors()) checkVector(v);
}

TEST(Pop3Command, Pipelined) {
  std::string in;
  std::vector<std::string> want;
  for (const Vec& v : vectors()) {
    if (v.small) continue;
    bool clean = true;
    for (const auto& w : v.want) clean = clean && w[0] != 'F' && w.find(" STLS ") == std::string::npos;
    if (!clean) continue;
    in += v.in;
    want.insert(want.end(), v.want.begin(), v.want.end());
  }
  ASSERT_GT(want.size(), 40u);
  const auto whole = run(in, {});
  EXPECT_EQ(texts(whole), want);
  std::vector<size_t> every;
  for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
  EXPECT_EQ(run(in, every), whole);
  std::mt19937 rng(99);
  for (int r = 0; r < 50; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < in.size(); ++i) {
      if (rng() % 5 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(in, cuts), whole);
  }
}

TEST(Pop3Command, ConsumedStopsAfterEachCommand) {
  Pop3CommandParser p({});
  const std::string in = "USER bob\r\nPASS a b\r\n";
  Pop3Feed f = p.feed(in);
  EXPECT_EQ(f.status, Pop3Status::kCommand);
  EXPECT_EQ(f.consumed, 10u);
  EXPECT_EQ(p.command().args[0], "bob");
  f = p.feed(std::string_view(in).substr(10));
  EXPECT_EQ(f.status, Pop3Status::kCommand);
  EXPECT_EQ(f.consumed, 10u);
  EXPECT_EQ(p.command().verb, Pop3Verb::kPass);
  ASSERT_EQ(p.command().argc, 1u);
  EXPECT_EQ(p.command().args[0], "a b");
}

TEST(Pop3Command, StlsInjectionIsDropped) {
  Pop3CommandParser p({});
  Pop3Feed f = p.feed("STLS\r\nUSER evil\r\n");
  ASSERT_EQ(f.status, Pop3Status::kCommand);
  EXPECT_EQ(f.consumed, 6u);
  EXPECT_EQ(p.command().verb, Pop3Verb::kStls);
  f = p.feed("USER ev");
  EXPECT_EQ(f.status, Pop3Status::kNeedMore);
  EXPECT_TRUE(p.hasPending());
  p.reset();
  EXPECT_FALSE(p.hasPending());
  f = p.feed("il\r\n");
  EXPECT_EQ(f.status, Pop3Status::kError);  // "il" is not a command; "USER evil" never completes
  EXPECT_EQ(p.errorText(), "Invalid command.");
  f = p.feed("CAPA\r\n");
  EXPECT_EQ(f.status, Pop3Status::kCommand);
  EXPECT_EQ(p.command().verb, Pop3Verb::kCapa);
}

TEST(Pop3Command, FatalIsSticky) {
  Pop3Limits l;
  l.max_line = 8;
  Pop3CommandParser p(l);
  Pop3Feed f = p.feed(std::string(40, 'x'));
  EXPECT_EQ(f.status, Pop3Status::kFatal);
  EXPECT_EQ(f.consumed, 33u);
  f = p.feed("CAPA\r\n");
  EXPECT_EQ(f.status, Pop3Status::kFatal);
  EXPECT_EQ(f.consumed, 0u);
  p.reset();
  EXPECT_EQ(p.feed("CAPA\r\n").status, Pop3Status::kCommand);
}

TEST(Pop3Command, DefaultLimits) {
  Pop3CommandParser p({});
  const std::string ok = "PASS " + std::string(505, 'p') + "\r\n";  // 512 octets
  Pop3Feed f = p.feed(ok);
  EXPECT_EQ(f.status, Pop3Status::kCommand);
  EXPECT_EQ(p.command().args[0].size(), 505u);
  const std::string bad = "PASS " + std::string(506, 'p') + "\r\n";
  f = p.feed(bad);
  EXPECT_EQ(f.status, Pop3Status::kError);
  EXPECT_EQ(f.consumed, bad.size());
  // SASL lines have their own, larger limit.
  p.expectSaslLine();
  const std::string sasl(8190, 'A');
  f = p.feed(sasl + "\r\n");
  EXPECT_EQ(f.status, Pop3Status::kSaslLine);
  EXPECT_EQ(p.saslLine().size(), 8190u);
}

}  // namespace
}  // namespace mailgate::codec
