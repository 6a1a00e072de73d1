#include "gateway/codec/imap_command.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using namespace std::string_literals;

const char* verbName(ImapVerb v) {
  switch (v) {
    case ImapVerb::kUnknown:
      return "UNKNOWN";
    case ImapVerb::kCapability:
      return "CAPABILITY";
    case ImapVerb::kNoop:
      return "NOOP";
    case ImapVerb::kLogout:
      return "LOGOUT";
    case ImapVerb::kStarttls:
      return "STARTTLS";
    case ImapVerb::kLogin:
      return "LOGIN";
    case ImapVerb::kAuthenticate:
      return "AUTHENTICATE";
    case ImapVerb::kId:
      return "ID";
    case ImapVerb::kOther:
      return "OTHER";
  }
  return "?";
}

struct Event {
  std::string text;
  size_t end;  // absolute input offset after the event
  bool operator==(const Event& o) const { return text == o.text && end == o.end; }
};

std::ostream& operator<<(std::ostream& os, const Event& e) {
  return os << "{" << e.text << " @" << e.end << "}";
}

bool equalsFolded(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(a[i])) != std::toupper(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

// Describes the parser's answer; checks that every token lies inside the parser's buffer.
std::string describe(const ImapCommandParser& p, ImapStatus s) {
  switch (s) {
    case ImapStatus::kNeedMore:
      return "?";
    case ImapStatus::kContinuation:
      return "+";
    case ImapStatus::kCommand: {
      const ImapCommand& c = p.command();
      EXPECT_TRUE(p.ownsView(c.tag));
      EXPECT_TRUE(p.ownsView(c.verb_text));
      std::string out = "C " + std::string(c.tag) + " " + verbName(c.verb) + " " + std::string(c.verb_text);
      for (uint32_t i = 0; i < c.argc; ++i) {
        const ImapArg& a = c.args[i];
        EXPECT_TRUE(p.ownsView(a.value));
        if (a.is_list_open) {
          out += " (";
        } else if (a.is_list_close) {
          out += " )";
        } else if (a.is_nil) {
          out += " nil:" + std::string(a.value);
        } else {
          out += " [" + std::string(a.value) + "]";
        }
      }
      return out;
    }
    case ImapStatus::kSaslLine:
      EXPECT_TRUE(p.ownsView(p.saslLine()));
      return "S [" + std::string(p.saslLine()) + "]";
    case ImapStatus::kError:
      if (p.errorTag() != "*") {
        EXPECT_TRUE(p.ownsView(p.errorTag()));
      }
      return "E " + std::string(p.errorTag()) + " " + std::string(p.errorText());
    case ImapStatus::kFatal:
      return "F " + std::string(p.errorTag()) + " " + std::string(p.errorText());
  }
  return "!";
}

// Feeds `in` cut at `cuts` (sorted offsets), acting as the session would: SASL lines after
// AUTHENTICATE without initial response (two for LOGIN, one otherwise, "*" cancels), and
// after STARTTLS reset() plus dropping every byte that followed it.
std::vector<Event> run(const std::string& in, const std::vector<size_t>& cuts, ImapLimits lim = {}) {
  ImapCommandParser p(lim);
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
      const ImapFeed f = p.feed(rest);
      EXPECT_LE(f.consumed, rest.size());
      if (f.consumed > rest.size()) return ev;
      rest.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == ImapStatus::kNeedMore) {
        EXPECT_TRUE(rest.empty());
        break;
      }
      EXPECT_FALSE(was_empty) << "an answer without input";
      EXPECT_GT(f.consumed, 0u);
      ev.push_back({describe(p, f.status), pos});
      switch (f.status) {
        case ImapStatus::kFatal:
          return ev;
        case ImapStatus::kCommand:
          if (p.command().verb == ImapVerb::kStarttls) {
            p.reset();
            EXPECT_FALSE(p.hasPending());
            return ev;  // whatever followed STARTTLS in plaintext is discarded
          }
          if (p.command().verb == ImapVerb::kAuthenticate && p.command().argc == 1) {
            sasl_left = equalsFolded(p.command().args[0].value, "LOGIN") ? 2 : 1;
            p.expectSaslLine();
            --sasl_left;
          }
          break;
        case ImapStatus::kSaslLine:
          if (p.saslLine() != "*" && sasl_left > 0) {
            p.expectSaslLine();
            --sasl_left;
          }
          break;
        case ImapStatus::kError:
          sasl_left = 0;
          break;
        case ImapStatus::kContinuation:
        case ImapStatus::kNeedMore:
          break;
      }
      // Nothing is buffered after an answer, except after "+" (the command is still open).
      EXPECT_EQ(p.hasPending(), f.status == ImapStatus::kContinuation);
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
  ImapLimits lim{};
  bool small = false;
};

ImapLimits smallLimits() {
  ImapLimits l;
  l.max_line = 64;
  l.max_literal = 16;
  l.max_args = 8;
  return l;
}

// Every vector whole, one byte at a time, at every split point and at random split points.
void checkVector(const Vec& v) {
  SCOPED_TRACE(v.name);
  const ImapLimits lim = v.small ? smallLimits() : v.lim;
  const auto whole = run(v.in, {}, lim);
  EXPECT_EQ(texts(whole), v.want);
  std::vector<size_t> every;
  for (size_t i = 1; i < v.in.size(); ++i) every.push_back(i);
  EXPECT_EQ(run(v.in, every, lim), whole) << "byte by byte";
  for (size_t k = 0; k <= v.in.size(); ++k) {
    EXPECT_EQ(run(v.in, {k}, lim), whole) << "split at " << k;
  }
  std::mt19937 rng(12345);
  for (int r = 0; r < 30; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < v.in.size(); ++i) {
      if (rng() % 4 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(v.in, cuts, lim), whole) << "random split " << r;
  }
}

const std::string k16A(16, 'A');
const std::string k16B(16, 'B');
const std::string kIdLimits =
    "[LIMIT] ID takes at most 30 pairs, fields of at most 30 octets, values of at most 1024 (RFC 2971).";
const std::string k30F(30, 'f');
const std::string k31F(31, 'f');
const std::string k1024V(1024, 'v');
const std::string k1025V(1025, 'v');

std::vector<Vec> vectors() {
  return {
      // --- the pre-auth commands
      {"capability", "a1 CAPABILITY\r\n", {"C a1 CAPABILITY CAPABILITY"}},
      {"noop", "a NOOP\r\n", {"C a NOOP NOOP"}},
      {"logout", "A003 logout\r\n", {"C A003 LOGOUT logout"}},
      {"starttls lower", "a starttls\r\n", {"C a STARTTLS starttls"}},
      {"tag with ]", "a] Noop\r\n", {"C a] NOOP Noop"}},
      {"other", "a SELECT INBOX\r\n", {"C a OTHER SELECT [INBOX]"}},
      {"other list", "a LIST \"\" *\r\n", {"C a OTHER LIST [] [*]"}},
      {"other parens", "a FETCH 1:* (FLAGS UID)\r\n", {"C a OTHER FETCH [1:*] ( [FLAGS] [UID] )"}},
      // --- LOGIN: atoms, quoted strings, literals
      {"login atoms", "a LOGIN bob secret\r\n", {"C a LOGIN LOGIN [bob] [secret]"}},
      {"login quoted escapes",
       "a LOGIN \"bob smith\" \"p\\\\a\\\"ss\"\r\n",
       {"C a LOGIN LOGIN [bob smith] [p\\a\"ss]"}},
      {"login quoted 8bit", "a LOGIN \"j\xc3\xbcrgen\" x\r\n", {"C a LOGIN LOGIN [j\xc3\xbcrgen] [x]"}},
      {"login empty quoted", "a LOGIN \"\" \"\"\r\n", {"C a LOGIN LOGIN [] []"}},
      {"login nil is an atom", "a LOGIN NIL nil\r\n", {"C a LOGIN LOGIN nil:NIL nil:nil"}},
      {"login sync literals",
       "a LOGIN {3}\r\nbob {4}\r\np w!\r\n",
       {"+", "+", "C a LOGIN LOGIN [bob] [p w!]"}},
      {"login literal holds CRLF", "a LOGIN {4}\r\na\r\nb \"x\"\r\n", {"+", "C a LOGIN LOGIN [a\r\nb] [x]"}},
      {"login zero literals", "a LOGIN {0}\r\n {0}\r\n\r\n", {"+", "+", "C a LOGIN LOGIN [] []"}},
      {"login literal+", "a LOGIN {3+}\r\nbob {2+}\r\npw\r\n", {"C a LOGIN LOGIN [bob] [pw]"}},
      {"login mixed", "a LOGIN {3+}\r\nbob {2}\r\npw\r\n", {"+", "C a LOGIN LOGIN [bob] [pw]"}},
      {"login one arg", "a LOGIN bob\r\n", {"E a Invalid arguments."}},
      {"login three args", "a LOGIN a b c\r\nb NOOP\r\n", {"E a Invalid arguments.", "C b NOOP NOOP"}},
      {"login third literal refused",
       "a LOGIN a b {3}\r\nb NOOP\r\n",
       {"E a Invalid arguments.", "C b NOOP NOOP"}},
      {"login double space", "a LOGIN a  b\r\n", {"E a Syntax error in arguments."}},
      {"bad escape", "a LOGIN \"a\\b\" x\r\n", {"E a Invalid quoted string."}},
      {"CR in quoted", "a LOGIN \"a\rb\" x\r\n", {"E a Invalid quoted string."}},
      {"unterminated quoted", "a LOGIN \"abc\r\nb NOOP\r\n", {"E a Invalid quoted string.", "C b NOOP NOOP"}},
      {"LF in quoted resyncs", "a LOGIN \"a\nb\" c\r\n", {"E a Line ends with bare LF.", "E * Invalid tag."}},
      {"NUL in literal (literal+)",
       "a LOGIN {3+}\r\na\0b x\r\nb NOOP\r\n"s,
       {"E a NUL in literal.", "C b NOOP NOOP"}},
      {"NUL in literal (sync)",
       "a LOGIN {3}\r\na\0b x\r\nb NOOP\r\n"s,
       {"+", "E a NUL in literal.", "C b NOOP NOOP"}},
      {"literal syntax", "a LOGIN {5 }\r\n", {"E a Invalid literal."}},
      {"literal empty number", "a LOGIN {}\r\n", {"E a Invalid literal."}},
      {"literal no CRLF", "a LOGIN {5}x\r\n", {"E a Invalid literal."}},
      {"literal CR without LF",
       "a LOGIN {5}\rx\r\nb NOOP\r\n",
       {"E a Bare CR in command line.", "C b NOOP NOOP"}},
      {"literal not allowed for NOOP",
       "a NOOP {3}\r\nb NOOP\r\n",
       {"E a Invalid arguments.", "C b NOOP NOOP"}},
      {"literal+ not allowed is skipped",
       "a NOOP {3+}\r\nabc\r\nb NOOP\r\n",
       {"E a Invalid arguments.", "C b NOOP NOOP"}},
      {"literal not allowed for other", "a SELECT {5}\r\n", {"E a Invalid arguments."}},
      {"literal not allowed for AUTHENTICATE", "a AUTHENTICATE {5}\r\n", {"E a Invalid arguments."}},
      // --- ID (RFC 2971)
      {"id list",
       "a ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n",
       {"C a ID ID ( [name] [Thunderbird] [version] nil:NIL )"}},
      {"id nil", "a id NIL\r\n", {"C a ID id nil:NIL"}},
      {"id empty list", "a ID ()\r\n", {"C a ID ID ( )"}},
      {"id literal", "a ID (\"name\" {3}\r\nfoo)\r\n", {"+", "C a ID ID ( [name] [foo] )"}},
      {"id odd", "a ID (\"name\")\r\n", {"E a Invalid arguments."}},
      {"id nil key", "a ID (NIL \"x\")\r\n", {"E a Invalid arguments."}},
      {"id nested", "a ID (\"a\" (\"b\"))\r\n", {"E a Invalid arguments."}},
      {"id unbalanced",
       "a ID (\"a\" \"b\"\r\nb NOOP\r\n",
       {"E a Syntax error in arguments.", "C b NOOP NOOP"}},
      {"id space after paren", "a ID ( \"a\" \"b\")\r\n", {"E a Syntax error in arguments."}},
      {"id trailing arg", "a ID (\"a\" \"b\") x\r\n", {"E a Invalid arguments."}},
      {"id no args", "a ID\r\n", {"E a Invalid arguments."}},
      // RFC 2971 §3.3: fields <= 30 octets, values <= 1024 octets, <= 30 pairs
      {"id quoted at the bounds",
       "a ID (\"" + k30F + "\" \"" + k1024V + "\")\r\n",
       {"C a ID ID ( [" + k30F + "] [" + k1024V + "] )"}},
      {"id quoted field too long",
       "a ID (\"" + k31F + "\" \"v\")\r\nb NOOP\r\n",
       {"E a " + kIdLimits, "C b NOOP NOOP"}},
      {"id quoted value too long",
       "a ID (\"f\" \"" + k1025V + "\")\r\nb NOOP\r\n",
       {"E a " + kIdLimits, "C b NOOP NOOP"}},
      {"id atom value too long", "a ID (\"f\" " + k1025V + ")\r\n", {"E a " + kIdLimits}},
      {"id literals at the bounds",
       "a ID ({30}\r\n" + k30F + " {1024+}\r\n" + k1024V + ")\r\n",
       {"+", "C a ID ID ( [" + k30F + "] [" + k1024V + "] )"}},
      {"id literal field too long",
       "a ID ({31}\r\nb NOOP\r\n",
       {"E a " + kIdLimits, "C b NOOP NOOP"}},
      {"id literal value too long",
       "a ID (\"f\" {1025}\r\nb NOOP\r\n",
       {"E a " + kIdLimits, "C b NOOP NOOP"}},
      {"id literal+ value too long is skipped",
       "a ID (\"f\" {1025+}\r\n" + k1025V + ")\r\nb NOOP\r\n",
       {"E a " + kIdLimits, "C b NOOP NOOP"}},
      {"close without open", "a ID )\r\n", {"E a Syntax error in arguments."}},
      // --- AUTHENTICATE, SASL-IR, SASL lines
      {"authenticate",
       "a AUTHENTICATE PLAIN\r\nAGJvYgBzZWNyZXQ=\r\nb NOOP\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "S [AGJvYgBzZWNyZXQ=]", "C b NOOP NOOP"}},
      {"authenticate login two lines",
       "a AUTHENTICATE LOGIN\r\nYm9i\r\nc2VjcmV0\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [LOGIN]", "S [Ym9i]", "S [c2VjcmV0]"}},
      {"authenticate cancel",
       "a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "S [*]", "C b NOOP NOOP"}},
      {"authenticate empty response",
       "a AUTHENTICATE PLAIN\r\n\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "S []"}},
      {"sasl bare LF",
       "a AUTHENTICATE PLAIN\r\nabc\nb NOOP\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "E a Line ends with bare LF.", "C b NOOP NOOP"}},
      {"sasl NUL",
       "a AUTHENTICATE PLAIN\r\na\0c\r\nb NOOP\r\n"s,
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "E a NUL in command line.", "C b NOOP NOOP"}},
      {"sasl-ir",
       "a AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN] [AGJvYgBzZWNyZXQ=]"}},
      {"sasl-ir empty", "a authenticate plain =\r\n", {"C a AUTHENTICATE authenticate [plain] [=]"}},
      {"sasl-ir bad base64", "a AUTHENTICATE PLAIN AGJ\r\n", {"E a Invalid arguments."}},
      {"sasl-ir bad padding", "a AUTHENTICATE PLAIN =AAA\r\n", {"E a Invalid arguments."}},
      {"authenticate quoted mech", "a AUTHENTICATE \"PLAIN\"\r\n", {"E a Invalid arguments."}},
      {"authenticate no mech", "a AUTHENTICATE\r\n", {"E a Invalid arguments."}},
      {"authenticate three args", "a AUTHENTICATE PLAIN = x\r\n", {"E a Invalid arguments."}},
      // --- framing and garbage
      {"bare LF", "a NOOP\nb NOOP\r\n", {"E a Line ends with bare LF.", "C b NOOP NOOP"}},
      {"bare CR", "a NO\rOP\r\nb NOOP\r\n", {"E a Bare CR in command line.", "C b NOOP NOOP"}},
      {"NUL", "a NO\0OP\r\nb NOOP\r\n"s, {"E a NUL in command line.", "C b NOOP NOOP"}},
      {"NUL in tag", "\0a NOOP\r\n"s, {"E * NUL in command line."}},
      {"lone LF", "\n", {"E * Line ends with bare LF."}},
      {"empty line", "\r\n", {"E * Empty command line."}},
      {"CR CR LF", "\r\r\n", {"E * Empty command line."}},
      {"tag only", "a\r\n", {"E a Missing command."}},
      {"tag and space", "a \r\n", {"E a Missing command."}},
      {"two spaces", "a  NOOP\r\n", {"E a Missing command."}},
      {"plus tag", "+a NOOP\r\n", {"E * Invalid tag."}},
      {"star tag", "* NOOP\r\n", {"E * Invalid tag."}},
      {"8bit tag", "\xff NOOP\r\n", {"E * Invalid tag."}},
      {"bad verb", "a NO(OP\r\n", {"E a Invalid command name."}},
      {"noop with arg", "a NOOP extra\r\n", {"E a Invalid arguments."}},
      {"trailing space", "a NOOP \r\n", {"E a Syntax error in arguments."}},
      // --- limits (max_line 64, max_literal 16, max_args 8)
      {"line at limit",
       "a X " + std::string(58, 'x') + "\r\n",
       {"C a OTHER X [" + std::string(58, 'x') + "]"},
       {},
       true},
      {"line over limit",
       "a X " + std::string(59, 'x') + "\r\nb NOOP\r\n",
       {"E a [TOOBIG] Command line too long.", "C b NOOP NOOP"},
       {},
       true},
      {"line 4x limit is still an error",
       "a X " + std::string(250, 'x') + "\r\nb NOOP\r\n",
       {"E a [TOOBIG] Command line too long.", "C b NOOP NOOP"},
       {},
       true},
      {"line over 4x limit is fatal",
       "a X " + std::string(300, 'x'),
       {"E a [TOOBIG] Command line too long.", "F a [TOOBIG] Command line too long."},
       {},
       true},
      {"long tag", std::string(70, 't') + " NOOP\r\n", {"E * [TOOBIG] Command line too long."}, {}, true},
      {"limit counts line parts around literals",
       "a LOGIN {3}\r\nbob " + std::string(50, 'p') + "\r\n",
       {"+", "E a [TOOBIG] Command line too long."},
       {},
       true},
      {"literal at limit",
       "a LOGIN {16}\r\n" + k16A + " {16+}\r\n" + k16B + "\r\n",
       {"+", "C a LOGIN LOGIN [" + k16A + "] [" + k16B + "]"},
       {},
       true},
      {"sync literal too big",
       "a LOGIN {17}\r\nb NOOP\r\n",
       {"E a [TOOBIG] Literal too big.", "C b NOOP NOOP"},
       {},
       true},
      {"sync literal huge number",
       "a LOGIN {99999999999999999999999999999}\r\nb NOOP\r\n",
       {"E a [TOOBIG] Literal too big.", "C b NOOP NOOP"},
       {},
       true},
      {"literal+ too big is fatal",
       "a LOGIN {17+}\r\n" + std::string(17, 'x') + "\r\n",
       {"F a [TOOBIG] Literal too big."},
       {},
       true},
      {"literal+ huge number is fatal",
       "a LOGIN {99999999999999999999999999999+}\r\n",
       {"F a [TOOBIG] Literal too big."},
       {},
       true},
      {"id literals have RFC 2971 bounds, not max_literal",
       "a ID ({30+}\r\n" + k30F + " {17+}\r\n" + k16B + "B {16}\r\n" + k16A + " NIL)\r\n",
       {"+", "C a ID ID ( [" + k30F + "] [" + k16B + "B] [" + k16A + "] nil:NIL )"},
       {},
       true},
      {"id literal+ over what may be skipped is fatal",
       "a ID (\"f\" {1025+}\r\n",
       {"F a [TOOBIG] Literal too big."},
       {},
       true},
      {"max args",
       "a FETCH 1 2 3 4 5 6 7 8\r\n",
       {"C a OTHER FETCH [1] [2] [3] [4] [5] [6] [7] [8]"},
       {},
       true},
      {"too many args",
       "a FETCH 1 2 3 4 5 6 7 8 9\r\nb NOOP\r\n",
       {"E a Invalid arguments.", "C b NOOP NOOP"},
       {},
       true},
      {"sasl line too long",
       "a AUTHENTICATE PLAIN\r\n" + std::string(63, 'A') + "\r\nb NOOP\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "E a [TOOBIG] Command line too long.", "C b NOOP NOOP"},
       {},
       true},
      {"sasl line at limit",
       "a AUTHENTICATE PLAIN\r\n" + std::string(62, 'A') + "\r\n",
       {"C a AUTHENTICATE AUTHENTICATE [PLAIN]", "S [" + std::string(62, 'A') + "]"},
       {},
       true},
      {"nesting limit", "a X ((((((((a))))))))\r\n", {"C a OTHER X ( ( ( ( ( ( ( ( [a] ) ) ) ) ) ) ) )"}},
      {"nesting over limit", "a X (((((((((a)))))))))\r\n", {"E a Syntax error in arguments."}},
  };
}

TEST(ImapCommand, Vectors) {
  for (const Vec& v : vectors()) checkVector(v);
}

// All default-limit vectors that end cleanly, back to back in one stream.
TEST(ImapCommand, Pipelined) {
  std::string in;
  std::vector<std::string> want;
  for (const Vec& v : vectors()) {
    if (v.small) continue;
    bool clean = true;
    for (const auto& w : v.want) clean = clean && w[0] != 'F' && w.find(" STARTTLS ") == std::string::npos;
    if (!clean) continue;
    in += v.in;
    want.insert(want.end(), v.want.begin(), v.want.end());
  }
  ASSERT_GT(want.size(), 60u);
  const auto whole = run(in, {});
  EXPECT_EQ(texts(whole), want);
  std::vector<size_t> every;
  for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
  EXPECT_EQ(run(in, every), whole);
  std::mt19937 rng(7);
  for (int r = 0; r < 50; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < in.size(); ++i) {
      if (rng() % 7 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(in, cuts), whole);
  }
}

TEST(ImapCommand, ConsumedStopsAfterEachCommand) {
  ImapCommandParser p({});
  const std::string in = "a NOOP\r\nb LOGIN x y\r\nc LOGOUT\r\n";
  ImapFeed f = p.feed(in);
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(f.consumed, 8u);
  EXPECT_EQ(p.command().tag, "a");
  f = p.feed(std::string_view(in).substr(8));
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(f.consumed, 13u);
  EXPECT_EQ(p.command().verb, ImapVerb::kLogin);
  ASSERT_EQ(p.command().argc, 2u);
  EXPECT_EQ(p.command().args[1].value, "y");
  f = p.feed(std::string_view(in).substr(21));
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(f.consumed, 10u);
  f = p.feed("");
  EXPECT_EQ(f.status, ImapStatus::kNeedMore);
  EXPECT_EQ(f.consumed, 0u);
}

TEST(ImapCommand, SynchronisingLiteralFlow) {
  ImapCommandParser p({});
  ImapFeed f = p.feed("a LOGIN {3}\r\nbob {6}\r\n");
  EXPECT_EQ(f.status, ImapStatus::kContinuation);
  EXPECT_EQ(f.consumed, 13u);  // stops right after the first "{3}\r\n"
  EXPECT_TRUE(p.hasPending());
  f = p.feed("bob {6}\r\n");
  EXPECT_EQ(f.status, ImapStatus::kContinuation);
  EXPECT_EQ(f.consumed, 9u);
  f = p.feed("se");
  EXPECT_EQ(f.status, ImapStatus::kNeedMore);
  EXPECT_EQ(f.consumed, 2u);
  f = p.feed("c\r\nt\r\nb NOOP\r\n");
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(f.consumed, 6u);
  EXPECT_EQ(p.command().args[0].value, "bob");
  EXPECT_EQ(p.command().args[1].value, "sec\r\nt");
  EXPECT_FALSE(p.hasPending());
}

TEST(ImapCommand, StarttlsInjectionIsDropped) {
  ImapCommandParser p({});
  const std::string in = "a STARTTLS\r\nb NOOP\r\n";
  ImapFeed f = p.feed(in);
  ASSERT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(f.consumed, 12u);
  EXPECT_EQ(p.command().verb, ImapVerb::kStarttls);
  EXPECT_FALSE(p.hasPending());
  // The injected bytes arrive in a second read, before the session resets the parser.
  f = p.feed("b NO");
  EXPECT_EQ(f.status, ImapStatus::kNeedMore);
  EXPECT_TRUE(p.hasPending());
  p.reset();
  EXPECT_FALSE(p.hasPending());
  // After the handshake: "OP\r\n" must not complete "b NOOP".
  f = p.feed("OP\r\nc CAPABILITY\r\n");
  EXPECT_EQ(f.status, ImapStatus::kError);
  EXPECT_EQ(p.errorTag(), "OP");
  f = p.feed("c CAPABILITY\r\n");
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(p.command().tag, "c");
  EXPECT_EQ(p.command().verb, ImapVerb::kCapability);
}

TEST(ImapCommand, ResetDropsLiteralAndSaslState) {
  ImapCommandParser p({});
  EXPECT_EQ(p.feed("a LOGIN {5}\r\n").status, ImapStatus::kContinuation);
  EXPECT_EQ(p.feed("ab").status, ImapStatus::kNeedMore);
  p.reset();
  EXPECT_FALSE(p.hasPending());
  ImapFeed f = p.feed("c NOOP\r\n");
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(p.command().tag, "c");

  p.expectSaslLine();
  p.reset();
  f = p.feed("d NOOP\r\n");
  EXPECT_EQ(f.status, ImapStatus::kCommand);
  EXPECT_EQ(p.command().tag, "d");
}

TEST(ImapCommand, FatalIsSticky) {
  ImapLimits l;
  l.max_literal = 4;
  ImapCommandParser p(l);
  ImapFeed f = p.feed("a LOGIN {5+}\r\nhello\r\n");
  EXPECT_EQ(f.status, ImapStatus::kFatal);
  EXPECT_EQ(f.consumed, 14u);
  EXPECT_EQ(p.errorTag(), "a");
  EXPECT_EQ(p.errorText(), "[TOOBIG] Literal too big.");
  f = p.feed("hello\r\n");
  EXPECT_EQ(f.status, ImapStatus::kFatal);
  EXPECT_EQ(f.consumed, 0u);
  p.reset();
  EXPECT_EQ(p.feed("b NOOP\r\n").status, ImapStatus::kCommand);
}

TEST(ImapCommand, SaslLineWithoutPriorCommandHasStarTag) {
  ImapCommandParser p({});
  p.expectSaslLine();
  ImapFeed f = p.feed("abc\n");
  EXPECT_EQ(f.status, ImapStatus::kError);
  EXPECT_EQ(p.errorTag(), "*");
  // one-shot: the next line is a command again
  f = p.feed("x NOOP\r\n");
  EXPECT_EQ(f.status, ImapStatus::kCommand);
}

TEST(ImapCommand, DefaultLimitsLongLine) {
  const size_t max = ImapLimits{}.max_line;
  EXPECT_EQ(max, 65536u);  // as Dovecot's imap_max_line_length
  ImapCommandParser p({});
  std::string line = "a LOGIN x " + std::string(max + 8, 'y') + "\r\n";
  ImapFeed f = p.feed(line);
  EXPECT_EQ(f.status, ImapStatus::kError);
  EXPECT_EQ(f.consumed, max + 1);  // reported as soon as the limit is crossed
  EXPECT_EQ(p.errorText(), "[TOOBIG] Command line too long.");
  f = p.feed(std::string_view(line).substr(max + 1));
  EXPECT_EQ(f.status, ImapStatus::kNeedMore);  // the rest of the line goes silently
  EXPECT_EQ(f.consumed, line.size() - max - 1);
  std::string huge(4 * max + 10, 'z');
  f = p.feed(huge);
  EXPECT_EQ(f.status, ImapStatus::kError);  // over the limit: reported at once
  EXPECT_EQ(f.consumed, max + 1);
  f = p.feed(std::string_view(huge).substr(max + 1));
  EXPECT_EQ(f.status, ImapStatus::kFatal);  // no LF within 4 * max_line
  EXPECT_EQ(f.consumed, 3 * max);
}

// The limits a session gets from the default configuration (max_literal 8K).
ImapLimits sessionLimits() {
  ImapLimits l;
  l.max_literal = 8192;
  return l;
}

// How an ID string is sent: quoted (escaping " and \), as a synchronising literal, or LITERAL+.
enum class IdForm { kQuoted, kLiteral, kLiteralPlus };

std::string idString(const std::string& v, IdForm form) {
  switch (form) {
    case IdForm::kQuoted: {
      std::string q = "\"";
      for (char c : v) {
        if (c == '"' || c == '\\') q += '\\';
        q += c;
      }
      return q + "\"";
    }
    case IdForm::kLiteral:
      return "{" + std::to_string(v.size()) + "}\r\n" + v;
    case IdForm::kLiteralPlus:
      return "{" + std::to_string(v.size()) + "+}\r\n" + v;
  }
  return {};
}

// "t1 ID (f1 v1 ... fn vn)" with n pairs: quoted fields of field_len octets from
// field_fill, values of value_len octets from value_fill sent in `form` (fills cycled).
std::string idCommand(size_t pairs, size_t field_len, size_t value_len, IdForm form, const std::string& value_fill,
                      std::vector<std::string>* values = nullptr, const std::string& field_fill = "field-") {
  std::string out = "t1 ID (";
  size_t k = 0;
  auto make = [&](size_t n, const std::string& fill) {
    std::string s;
    for (size_t j = 0; j < n; ++j) s += fill[k++ % fill.size()];
    return s;
  };
  for (size_t i = 0; i < pairs; ++i) {
    if (i > 0) out += ' ';
    std::string field = make(field_len, field_fill);
    std::string value = make(value_len, value_fill);
    if (values) {
      values->push_back(field);
      values->push_back(value);
    }
    out += idString(field, IdForm::kQuoted) + " " + idString(value, form);
  }
  return out + ")\r\n";
}

// Feeds `in` in chunks of `chunk` octets, as the session does (continuations are
// answered by going on). The statuses other than kNeedMore/kContinuation, in order.
std::vector<ImapStatus> feedAll(ImapCommandParser& p, std::string_view in, size_t chunk, int* continuations) {
  std::vector<ImapStatus> out;
  while (!in.empty()) {
    std::string_view piece = in.substr(0, chunk);
    in.remove_prefix(piece.size());
    while (!piece.empty()) {
      const ImapFeed f = p.feed(piece);
      piece.remove_prefix(f.consumed);
      if (f.status == ImapStatus::kContinuation) {
        ++*continuations;
      } else if (f.status != ImapStatus::kNeedMore) {
        out.push_back(f.status);
        if (f.status == ImapStatus::kFatal) return out;
      } else if (f.consumed == 0) {
        break;
      }
    }
  }
  return out;
}

TEST(ImapCommand, LargestIdTheRfcAllowsIsAccepted) {
  struct Case {
    const char* name;
    IdForm form;
    std::string fill;
    std::string field_fill = "field-";
  };
  const Case cases[] = {
      {"quoted", IdForm::kQuoted, "abcdefghijklmnopqrstuvwxyz0123456789 -._()"},
      {"quoted, every octet escaped", IdForm::kQuoted, "\"\\", "\\\""},
      {"synchronising literals", IdForm::kLiteral, "x\x01\xff\"\\()\r\n{}"},
      {"LITERAL+", IdForm::kLiteralPlus, "literal plus "},
  };
  for (const Case& c : cases) {
    for (size_t chunk : {size_t{1}, size_t{7}, size_t{1460}, size_t{1} << 20}) {
      SCOPED_TRACE(std::string(c.name) + ", chunks of " + std::to_string(chunk));
      std::vector<std::string> want;
      const std::string in = idCommand(30, 30, 1024, c.form, c.fill, &want, c.field_fill) + "t2 NOOP\r\n";
      if (c.form == IdForm::kQuoted) {
        EXPECT_GT(in.size(), 30000u);
      }
      if (c.fill.size() == 2) {
        EXPECT_GT(in.size(), 63000u);  // escaped: twice the octets
      }
      ImapCommandParser p(sessionLimits());
      int continuations = 0;
      ImapStatus first = ImapStatus::kNeedMore;
      std::string_view rest = in;
      // Stop at the ID command to look at it, then go on with the NOOP.
      while (!rest.empty()) {
        const ImapFeed f = p.feed(rest.substr(0, chunk));
        rest.remove_prefix(f.consumed);
        if (f.status == ImapStatus::kContinuation) {
          ++continuations;
          continue;
        }
        if (f.status != ImapStatus::kNeedMore) {
          first = f.status;
          break;
        }
      }
      ASSERT_EQ(first, ImapStatus::kCommand) << p.errorText();
      const ImapCommand& cmd = p.command();
      EXPECT_EQ(cmd.verb, ImapVerb::kId);
      ASSERT_EQ(cmd.argc, 62u);
      EXPECT_TRUE(cmd.args[0].is_list_open);
      EXPECT_TRUE(cmd.args[61].is_list_close);
      for (uint32_t i = 1; i <= 60; ++i) EXPECT_EQ(cmd.args[i].value, want[i - 1]) << "argument " << i;
      EXPECT_EQ(continuations, c.form == IdForm::kLiteral ? 30 : 0);
      std::vector<ImapStatus> after = feedAll(p, rest, chunk, &continuations);
      EXPECT_EQ(after, std::vector<ImapStatus>{ImapStatus::kCommand});
      EXPECT_EQ(p.command().verb, ImapVerb::kNoop);
    }
  }
}

TEST(ImapCommand, IdOverTheRfcBoundsIsRefused) {
  struct Case {
    const char* name;
    std::string in;
  };
  const Case cases[] = {
      {"31 pairs", idCommand(31, 30, 1024, IdForm::kQuoted, "ab")},
      {"31 pairs of literals", idCommand(31, 3, 4, IdForm::kLiteralPlus, "ab")},
      {"a 31-octet field", idCommand(30, 30, 1024, IdForm::kQuoted, "ab").replace(8, 0, "x")},
      {"a 1025-octet value", idCommand(1, 30, 1025, IdForm::kQuoted, "ab")},
      {"a 1025-octet value among 30 pairs", idCommand(29, 30, 1024, IdForm::kQuoted, "ab").insert(7, "\"f\" \"" + k1025V + "\" ")},
      {"a 1025-octet literal value", "t1 ID (\"f\" {1025}\r\n"},  // no "+": no data follows
      {"a 1025-octet literal+ value", idCommand(1, 30, 1025, IdForm::kLiteralPlus, "ab")},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ImapCommandParser p(sessionLimits());
    int continuations = 0;
    const std::vector<ImapStatus> got = feedAll(p, c.in + "t2 NOOP\r\n", 1460, &continuations);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0], ImapStatus::kError);
    EXPECT_EQ(got[1], ImapStatus::kCommand);  // resynchronised: the next command is read
    ImapCommandParser q(sessionLimits());
    const std::vector<ImapStatus> first = feedAll(q, c.in, 1460, &continuations);
    ASSERT_EQ(first, std::vector<ImapStatus>{ImapStatus::kError});
    EXPECT_EQ(q.errorTag(), "t1");
    EXPECT_EQ(q.errorText(), kIdLimits);
  }
}

TEST(ImapCommand, LineOverTheDefaultBoundIsRefused) {
  // An ID that no RFC allows and that does not fit the line: [TOOBIG] at once.
  ImapCommandParser p(sessionLimits());
  const std::string in = "t1 ID (\"f\" \"" + std::string(70000, 'v') + "\")\r\nt2 NOOP\r\n";
  int continuations = 0;
  const std::vector<ImapStatus> got = feedAll(p, in, 65536, &continuations);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], ImapStatus::kError);
  EXPECT_EQ(got[1], ImapStatus::kCommand);
  EXPECT_EQ(p.command().verb, ImapVerb::kNoop);
}

TEST(ImapCommand, OtherPreauthCommandsFitTheDefaultBound) {
  // LOGIN with quoted strings and AUTHENTICATE with a SASL-IR response of several KB.
  const std::string user(200, 'u');
  const std::string password(6000, 'p');
  ImapCommandParser p(sessionLimits());
  ImapFeed f = p.feed("a LOGIN \"" + user + "\" \"" + password + "\"\r\n");
  ASSERT_EQ(f.status, ImapStatus::kCommand) << p.errorText();
  EXPECT_EQ(p.command().args[1].value, password);
  const std::string ir(12000, 'A');
  f = p.feed("b AUTHENTICATE PLAIN " + ir + "\r\n");
  ASSERT_EQ(f.status, ImapStatus::kCommand) << p.errorText();
  EXPECT_EQ(p.command().args[1].value, ir);
  f = p.feed("c AUTHENTICATE PLAIN\r\n");
  ASSERT_EQ(f.status, ImapStatus::kCommand);
  p.expectSaslLine();
  f = p.feed(ir + "\r\n");
  ASSERT_EQ(f.status, ImapStatus::kSaslLine) << p.errorText();
  EXPECT_EQ(p.saslLine(), ir);
  // LOGIN literals stay bounded by max_literal.
  f = p.feed("d LOGIN {8193}\r\n");
  EXPECT_EQ(f.status, ImapStatus::kError);
  EXPECT_EQ(p.errorText(), "[TOOBIG] Literal too big.");
}

}  // namespace
}  // namespace mailgate::codec
