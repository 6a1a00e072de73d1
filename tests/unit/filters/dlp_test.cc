// The built-in DLP scanner: the validators (Luhn, IBAN mod 97), the built-in patterns,
// the MIME walk (plain text, base64 and quoted-printable parts, text attachments, the
// RFC 2047 subject, parts it does not read), matches across window boundaries,
// context words, min_count, distinct matches, bounded memory on a 10 MB message,
// broken MIME, body errors, the deadline, and the hook's verdicts, which never carry
// the matched text.
#include "filters/dlp.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace mailgate::filters {
namespace {

// The message in memory; reads return at most max_read octets and fail from fail_at on.
class MemoryBody final : public MessageBody {
 public:
  explicit MemoryBody(std::string s) : s_(std::move(s)) {}
  uint64_t size() const override { return s_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    largest_read = std::max(largest_read, n);
    if (off + n > fail_at) return false;
    *out = off < s_.size() ? s_.substr(off, std::min(n, max_read)) : std::string();
    return true;
  }
  size_t max_read = SIZE_MAX;
  uint64_t fail_at = UINT64_MAX;
  mutable size_t largest_read = 0;

 private:
  std::string s_;
};

std::string crlf(std::string_view s) {
  std::string r;
  for (char c : s) {
    if (c == '\n') r += '\r';
    r += c;
  }
  return r;
}

std::string base64Raw(std::string_view s) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < s.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(s[i])) << 16;
    if (i + 1 < s.size()) v |= static_cast<uint32_t>(static_cast<unsigned char>(s[i + 1])) << 8;
    if (i + 2 < s.size()) v |= static_cast<uint32_t>(static_cast<unsigned char>(s[i + 2]));
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < s.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += i + 2 < s.size() ? kAlphabet[v & 63] : '=';
  }
  return out;
}

// Base64 in lines of 76.
std::string base64(std::string_view s) {
  const std::string out = base64Raw(s);
  std::string lines;
  for (size_t i = 0; i < out.size(); i += 76) lines += out.substr(i, 76) + "\n";
  return lines;
}

DlpDetector card(uint32_t min_count = 1) {
  DlpDetector d;
  d.id = "card";
  d.pattern = "card_number";
  d.validate = DlpValidator::kLuhn;
  d.min_count = min_count;
  return d;
}

DlpDetector iban() {
  DlpDetector d;
  d.id = "iban";
  d.pattern = "iban";
  d.validate = DlpValidator::kIbanMod97;
  return d;
}

std::shared_ptr<const DlpScanner> build(std::vector<DlpDetector> ds) {
  std::string err;
  auto s = DlpScanner::build(std::move(ds), &err);
  EXPECT_NE(s, nullptr) << err;
  return s;
}

uint32_t countOf(const DlpResult& r, const std::string& id) {
  for (const DlpHit& h : r.hits)
    if (h.id == id) return h.count;
  ADD_FAILURE() << "no detector " << id;
  return 0;
}

DlpResult scanMessage(const DlpScanner& s, const std::string& msg, uint64_t max_bytes = 50ull << 20) {
  MemoryBody body(crlf(msg));
  DlpResult r;
  std::string err;
  EXPECT_TRUE(s.scan(body, max_bytes, std::chrono::steady_clock::now() + std::chrono::seconds(30), &r, &err))
      << err;
  return r;
}

const char* const kCards[] = {"4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"};
// The same numbers with their last digit changed: Luhn fails.
const char* const kBrokenCards[] = {"4111 1111 1111 1112", "5555-5555-5555-4445", "378282246310006"};

std::string cardText(const char* const* cards) {
  return std::string("Here are the numbers:\n") + cards[0] + "\nand " + cards[1] + ", also " + cards[2] +
         ".\n";
}

// --- validators -------------------------------------------------------------------

TEST(DlpLuhn, KnownTestNumbers) {
  for (const char* n : {"4111111111111111", "5555555555554444", "378282246310005", "4111 1111 1111 1111",
                        "5555-5555-5555-4444", "6011111111111117", "4012888888881881"})
    EXPECT_TRUE(luhnValid(n)) << n;
}

TEST(DlpLuhn, OneDigitChangedFails) {
  for (std::string n : {"4111111111111111", "5555555555554444", "378282246310005"}) {
    for (size_t i = 0; i < n.size(); i++) {
      std::string m = n;
      m[i] = m[i] == '9' ? '0' : static_cast<char>(m[i] + 1);
      EXPECT_FALSE(luhnValid(m)) << m;
    }
  }
  EXPECT_FALSE(luhnValid(""));
  EXPECT_FALSE(luhnValid("0"));
  EXPECT_FALSE(luhnValid("abc"));
}

TEST(DlpIban, ValidNumbers) {
  for (const char* n : {"GB82WEST12345698765432", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32",
                        "DE89 3704 0044 0532 0130 00", "gb82west12345698765432",
                        "FR1420041010050500013M02606", "NO9386011117947"})
    EXPECT_TRUE(ibanValid(n)) << n;
}

TEST(DlpIban, OneCharacterChangedFails) {
  for (std::string n : {"GB82WEST12345698765432", "DE89370400440532013000"}) {
    for (size_t i = 0; i < n.size(); i++) {
      std::string m = n;
      m[i] = m[i] == '9' ? '0' : m[i] == 'Z' ? 'A' : static_cast<char>(m[i] + 1);
      EXPECT_FALSE(ibanValid(m)) << m;
    }
  }
}

TEST(DlpIban, CountryLengthAndShape) {
  EXPECT_FALSE(ibanValid("GB82WEST1234569876543"));  // one short for GB
  EXPECT_FALSE(ibanValid("12GBWEST12345698765432"));
  EXPECT_FALSE(ibanValid("GB82-WEST-1234-5698-7654-32"));
  EXPECT_FALSE(ibanValid(""));
  EXPECT_FALSE(ibanValid(std::string(100, '1')));
  // A longer match (the printed form ran into the next word): the country's length decides.
  EXPECT_TRUE(ibanValid("GB82 WEST 1234 5698 7654 32 EUR"));
}

// --- patterns over text -----------------------------------------------------------

TEST(DlpScan, CardsInPlainText) {
  auto s = build({card()});
  DlpResult r;
  s->scanText(cardText(kCards), &r);
  EXPECT_EQ(countOf(r, "card"), 3u);
  EXPECT_EQ(r.fired, std::vector<std::string>{"card"});
  s->scanText(cardText(kBrokenCards), &r);
  EXPECT_EQ(countOf(r, "card"), 0u);
  EXPECT_TRUE(r.fired.empty());
}

TEST(DlpScan, DistinctMatchesOnly) {
  auto s = build({card()});
  DlpResult r;
  s->scanText("4111111111111111 and 4111 1111 1111 1111 and 4111-1111-1111-1111", &r);
  EXPECT_EQ(countOf(r, "card"), 1u);
}

TEST(DlpScan, CardsNeedBoundaries) {
  auto s = build({card()});
  DlpResult r;
  s->scanText("id=x4111111111111111 94111111111111111111 1234", &r);
  EXPECT_EQ(countOf(r, "card"), 0u);
  s->scanText("(4111111111111111)", &r);
  EXPECT_EQ(countOf(r, "card"), 1u);
}

TEST(DlpScan, IbansValidAndInvalid) {
  auto s = build({iban()});
  DlpResult r;
  s->scanText("Pay to GB82 WEST 1234 5698 7654 32 today, or DE89370400440532013000.", &r);
  EXPECT_EQ(countOf(r, "iban"), 2u);
  s->scanText("Pay to GB82 WEST 1234 5698 7654 33 today, or DE89370400440532013001.", &r);
  EXPECT_EQ(countOf(r, "iban"), 0u);
}

TEST(DlpScan, MinCount) {
  auto s = build({card(3)});
  DlpResult r;
  s->scanText(std::string(kCards[0]) + " " + kCards[1], &r);
  EXPECT_EQ(countOf(r, "card"), 2u);
  EXPECT_TRUE(r.fired.empty());
  s->scanText(cardText(kCards), &r);
  EXPECT_EQ(r.fired, std::vector<std::string>{"card"});
}

TEST(DlpScan, ContextWords) {
  DlpDetector d = card();
  d.context = {"Visa", "card number"};
  d.context_window = 20;
  auto s = build({d});
  DlpResult r;
  s->scanText("my VISA: 4111111111111111", &r);
  EXPECT_EQ(countOf(r, "card"), 1u);
  s->scanText("4111111111111111 is the Card Number", &r);
  EXPECT_EQ(countOf(r, "card"), 1u);
  s->scanText("my number 4111111111111111 thanks", &r);
  EXPECT_EQ(countOf(r, "card"), 0u);
  // Outside the window: 30 octets away.
  s->scanText("visa" + std::string(30, ' ') + "4111111111111111", &r);
  EXPECT_EQ(countOf(r, "card"), 0u);
}

TEST(DlpScan, CustomPattern) {
  DlpDetector d;
  d.id = "secret";
  d.pattern = R"((?i)project\s+falcon)";
  auto s = build({d});
  DlpResult r;
  s->scanText("about PROJECT  Falcon and project falcon", &r);
  EXPECT_EQ(countOf(r, "secret"), 1u);  // the same words, case folded
  std::string err;
  DlpDetector bad;
  bad.id = "bad";
  bad.pattern = "(";
  EXPECT_EQ(DlpScanner::build({bad}, &err), nullptr);
  EXPECT_NE(err.find("detector bad"), std::string::npos);
}

// A match placed at every offset around the first window boundaries is found once.
TEST(DlpScan, AcrossWindowBoundaries) {
  auto s = build({card()});
  const std::string number = "4111 1111 1111 1111";
  for (size_t first : {kDlpWindow, 2 * kDlpWindow}) {
    for (size_t at = first - 40; at < first + kDlpMaxMatch + 40; at++) {
      std::string text(at, 'x');
      text.back() = ' ';
      text += number;
      text += ' ';
      text += std::string(3 * kDlpWindow - text.size(), 'y');
      DlpResult r;
      s->scanText(text, &r);
      ASSERT_EQ(countOf(r, "card"), 1u) << "at " << at;
    }
  }
}

TEST(DlpScan, ContextAcrossWindowBoundary) {
  DlpDetector d = card();
  d.context = {"visa"};
  d.context_window = 300;
  auto s = build({d});
  for (size_t at = kDlpWindow - 20; at < kDlpWindow + 900; at += 7) {
    std::string text(at - 250, 'x');
    text += " visa ";
    text += std::string(250 - 6, ' ');
    text += "4111111111111111 ";
    text += std::string(2 * kDlpWindow, 'z');
    DlpResult r;
    s->scanText(text, &r);
    ASSERT_EQ(countOf(r, "card"), 1u) << "at " << at;
  }
}

// --- messages ------------------------------------------------------------------------

TEST(DlpMessage, PlainTextBody) {
  auto s = build({card(3), iban()});
  DlpResult r = scanMessage(*s, "From: a@example.org\nSubject: hi\n\n" + cardText(kCards));
  EXPECT_EQ(countOf(r, "card"), 3u);
  EXPECT_EQ(countOf(r, "iban"), 0u);
  EXPECT_EQ(r.fired, std::vector<std::string>{"card"});
}

std::string withAttachment(const std::string& type, const std::string& name, const std::string& content) {
  return "From: a@example.org\nSubject: report\nMIME-Version: 1.0\n"
         "Content-Type: multipart/mixed; boundary=\"b1\"\n\n"
         "--b1\nContent-Type: text/plain\n\nsee the attachment\n"
         "--b1\nContent-Type: " +
         type + "; name=\"" + name + "\"\nContent-Disposition: attachment; filename=\"" + name +
         "\"\nContent-Transfer-Encoding: base64\n\n" + base64(content) + "--b1--\n";
}

TEST(DlpMessage, Base64TextAttachment) {
  auto s = build({card(3)});
  DlpResult r = scanMessage(*s, withAttachment("text/plain", "cards.txt", cardText(kCards)));
  EXPECT_EQ(countOf(r, "card"), 3u);
  r = scanMessage(*s, withAttachment("text/plain", "cards.txt", cardText(kBrokenCards)));
  EXPECT_EQ(countOf(r, "card"), 0u);
}

TEST(DlpMessage, OctetStreamNamedLikeText) {
  auto s = build({card(3)});
  for (const char* name : {"export.CSV", "dump.txt", "app.log", "t.tsv"}) {
    DlpResult r = scanMessage(*s, withAttachment("application/octet-stream", name, cardText(kCards)));
    EXPECT_EQ(countOf(r, "card"), 3u) << name;
  }
  // Not a text file: not read.
  DlpResult r = scanMessage(*s, withAttachment("application/octet-stream", "blob.bin", cardText(kCards)));
  EXPECT_EQ(countOf(r, "card"), 0u);
  r = scanMessage(*s, withAttachment("image/png", "pic.png", cardText(kCards)));
  EXPECT_EQ(countOf(r, "card"), 0u);
}

TEST(DlpMessage, QuotedPrintable) {
  auto s = build({card()});
  // A soft line break and an encoded space inside the number.
  DlpResult r = scanMessage(*s,
                            "Subject: qp\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                            "Content-Transfer-Encoding: quoted-printable\n\n"
                            "card: 4111=201111 11=\n11 1111 ok=3D\n");
  EXPECT_EQ(countOf(r, "card"), 1u);
}

TEST(DlpMessage, OtherCharsetIsConverted) {
  auto s = build({card()});
  std::string utf16 = "Content-Type: text/plain; charset=utf-16le\nContent-Transfer-Encoding: base64\n\n";
  std::string text;
  for (char c : std::string("n 4111111111111111 .")) {
    text += c;
    text += '\0';
  }
  DlpResult r = scanMessage(*s, "Subject: x\nMIME-Version: 1.0\n" + utf16 + base64(text));
  EXPECT_EQ(countOf(r, "card"), 1u);
}

TEST(DlpMessage, EncodedSubject) {
  auto s = build({card()});
  const std::string subj = "=?UTF-8?B?" + base64Raw("card 4111111111111111") + "?=";
  DlpResult r = scanMessage(*s, "Subject: " + subj + "\n\nnothing here\n");
  EXPECT_EQ(countOf(r, "card"), 1u);
  r = scanMessage(*s, "Subject: =?iso-8859-1?Q?Nr=2E_4111_1111_1111_1111?=\n\nnothing\n");
  EXPECT_EQ(countOf(r, "card"), 1u);
}

TEST(DlpMessage, NestedMessageAndMultipart) {
  auto s = build({card(3)});
  const std::string msg =
      "Subject: outer\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n"
      "--o\nContent-Type: multipart/alternative; boundary=i\n\n"
      "--i\nContent-Type: text/plain\n\n4111111111111111\n"
      "--i\nContent-Type: text/html\n\n<p>5555555555554444</p>\n--i--\n"
      "--o\nContent-Type: message/rfc822\n\nSubject: 378282246310005\n\ninner\n"
      "--o--\n";
  DlpResult r = scanMessage(*s, msg);
  EXPECT_EQ(countOf(r, "card"), 3u);
  EXPECT_EQ(r.parts, 5u);  // both subjects, the two text parts, the inner body
}

TEST(DlpMessage, AcrossWindowBoundaryInBase64) {
  auto s = build({card()});
  for (size_t at : {kDlpWindow - 10, kDlpWindow - 5, kDlpWindow + kDlpMaxMatch - 20}) {
    std::string text(at, 'a');
    text += " 4111-1111-1111-1111 ";
    text += std::string(kDlpWindow, 'b');
    DlpResult r = scanMessage(*s, withAttachment("text/csv", "x.csv", text));
    EXPECT_EQ(countOf(r, "card"), 1u) << at;
  }
}

// A 10 MB message made on demand (the test never holds it whole either): a base64
// text attachment with a card at the start and one at the end.
class GeneratedBody final : public MessageBody {
 public:
  explicit GeneratedBody(size_t lines) : lines_(lines) {
    head_ = crlf(
        "From: a@example.org\nSubject: big\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain; name=big.txt\nContent-Transfer-Encoding: base64\n\n");
    tail_ = crlf("--b--\n");
    std::string first(57, 'x'), filler(57, 'f'), last(57, 'z');
    first.replace(10, 18, " 4111111111111111 ");
    last.replace(30, 18, " 5555555555554444 ");
    first_ = crlf(base64(first));
    filler_ = crlf(base64(filler));
    last_ = crlf(base64(last));
  }
  uint64_t size() const override { return head_.size() + lines_ * filler_.size() + tail_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    largest_read = std::max(largest_read, n);
    out->clear();
    const uint64_t end = std::min<uint64_t>(size(), off + n);
    while (off < end) {
      const std::string* piece;
      uint64_t at;
      if (off < head_.size()) {
        piece = &head_, at = off;
      } else if (off < head_.size() + lines_ * filler_.size()) {
        const uint64_t rel = off - head_.size();
        const uint64_t line = rel / filler_.size();
        piece = line == 0 ? &first_ : line == lines_ - 1 ? &last_ : &filler_;
        at = rel % filler_.size();
      } else {
        piece = &tail_, at = off - head_.size() - lines_ * filler_.size();
      }
      const size_t take = static_cast<size_t>(std::min<uint64_t>(piece->size() - at, end - off));
      out->append(*piece, static_cast<size_t>(at), take);
      off += take;
    }
    return true;
  }
  mutable size_t largest_read = 0;

 private:
  size_t lines_;
  std::string head_, tail_, first_, filler_, last_;
};

long maxRssKb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

TEST(DlpMessage, TenMegabytesInBoundedMemory) {
  auto s = build({card()});
  GeneratedBody body(10 * 1024 * 1024 / 78);
  ASSERT_GT(body.size(), 10u * 1000 * 1000);
  const long before = maxRssKb();
  DlpResult r;
  std::string err;
  ASSERT_TRUE(
      s->scan(body, 50ull << 20, std::chrono::steady_clock::now() + std::chrono::seconds(60), &r, &err))
      << err;
  EXPECT_EQ(countOf(r, "card"), 2u) << r.scanned << " octets in " << r.parts << " parts";
  EXPECT_FALSE(r.truncated);
  EXPECT_GT(r.scanned, 7u * 1000 * 1000);
  // The largest buffers: the body's read window and the scan window, never the message.
  EXPECT_LE(body.largest_read, 64u * 1024);
  EXPECT_LE(r.largest_buffer, 2 * kDlpWindow);
  // Peak resident memory grew by less than the message's size.
  EXPECT_LT((maxRssKb() - before) * 1024, static_cast<long>(body.size()) / 2);
}

TEST(DlpMessage, MaxBytesBoundsTheScan) {
  auto s = build({card()});
  std::string text(100000, 'a');
  text += " 4111111111111111 ";
  DlpResult r = scanMessage(*s, "Subject: x\n\n" + text, 50000);
  EXPECT_TRUE(r.truncated);
  EXPECT_LE(r.scanned, 50000u);
  EXPECT_EQ(countOf(r, "card"), 0u);
}

TEST(DlpMessage, BodyErrorAndDeadline) {
  auto s = build({card()});
  MemoryBody body(crlf(withAttachment("text/plain", "a.txt", std::string(200000, 'q'))));
  body.fail_at = 70000;
  DlpResult r;
  std::string err;
  EXPECT_FALSE(
      s->scan(body, 50ull << 20, std::chrono::steady_clock::now() + std::chrono::seconds(30), &r, &err));
  EXPECT_NE(err.find("cannot read"), std::string::npos) << err;
  MemoryBody ok(crlf("Subject: x\n\nbody\n"));
  err.clear();
  EXPECT_FALSE(
      s->scan(ok, 50ull << 20, std::chrono::steady_clock::now() - std::chrono::seconds(1), &r, &err));
  EXPECT_NE(err.find("deadline"), std::string::npos) << err;
}

TEST(DlpMessage, GarbageDoesNotCrash) {
  auto s = build({card(), iban()});
  std::mt19937 rng(7);
  const std::vector<std::string> pieces = {"--b\n",
                                           "Content-Type: multipart/mixed; boundary=b\n",
                                           "\n",
                                           "Content-Transfer-Encoding: base64\n",
                                           "Content-Transfer-Encoding: quoted-printable\n",
                                           "=?UTF-8?B?====?=",
                                           "Subject: ",
                                           "4111 1111 1111 1111",
                                           "=\n",
                                           "=ZZ",
                                           "\r",
                                           "\0",
                                           "Content-Type: message/rfc822\n",
                                           "Content-Type: text/plain; charset=bogus-99\n",
                                           "AAAA",
                                           "GB82 WEST 1234 5698 7654 32",
                                           "\xff\xfe"};
  for (int round = 0; round < 300; round++) {
    std::string msg;
    const int n = static_cast<int>(rng() % 60);
    for (int i = 0; i < n; i++) msg += pieces[rng() % pieces.size()];
    for (int i = 0; i < 5; i++)
      if (!msg.empty()) msg[rng() % msg.size()] = static_cast<char>(rng());
    MemoryBody body(msg);
    body.max_read = 1 + rng() % 100;
    DlpResult r;
    std::string err;
    EXPECT_TRUE(
        s->scan(body, 50ull << 20, std::chrono::steady_clock::now() + std::chrono::seconds(30), &r, &err))
        << err;
  }
  // Deep nesting.
  std::string deep;
  for (int i = 0; i < 2000; i++)
    deep += "Content-Type: multipart/mixed; boundary=b" + std::to_string(i) + "\n\n--b" + std::to_string(i) +
            "\n";
  DlpResult r = scanMessage(*s, deep + "\n4111111111111111\n");
  (void)r;
}

// --- the hook -------------------------------------------------------------------------

SessionFacts facts() {
  SessionFacts f;
  f.session_id = "s1";
  f.listener = "mx";
  f.protocol = "smtp";
  return f;
}

std::string numbersOnly(const std::string& s) {
  std::string d;
  for (char c : s)
    if (c >= '0' && c <= '9') d += c;
  return d;
}

// No run of digits from the cards shows in the verdict.
void expectNoCardData(const Verdict& v) {
  for (const std::string& t : {v.text, v.reason, v.header}) {
    EXPECT_EQ(t.find("4111"), std::string::npos) << t;
    EXPECT_EQ(t.find("5555"), std::string::npos) << t;
    EXPECT_EQ(t.find("3782"), std::string::npos) << t;
    EXPECT_LE(numbersOnly(t).size(), 3u) << t;
  }
}

TEST(DlpHookTest, Verdicts) {
  MemoryBody body(crlf(withAttachment("text/plain", "c.txt", cardText(kCards))));
  DlpOptions o;
  o.name = "dlp";
  o.detectors = {card(3), iban()};

  o.on_match = DlpOnMatch::kReject;
  Verdict v = DlpHook(o).inspect(facts(), body);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.code, 554);
  EXPECT_EQ(v.enhanced, "5.7.1");
  EXPECT_EQ(v.text, "Message refused by content policy (DLP: card x3)");
  EXPECT_EQ(v.reason, "dlp dlp: card=3");
  expectNoCardData(v);

  o.on_match = DlpOnMatch::kQuarantine;
  v = DlpHook(o).inspect(facts(), body);
  EXPECT_EQ(v.action, Action::kQuarantine);
  expectNoCardData(v);

  o.on_match = DlpOnMatch::kTag;
  v = DlpHook(o).inspect(facts(), body);
  EXPECT_EQ(v.action, Action::kAddHeader);
  EXPECT_EQ(v.header, "X-Mailgate-DLP: card=3");
  expectNoCardData(v);
  o.tag_header = "X-Sensitive: yes";
  v = DlpHook(o).inspect(facts(), body);
  EXPECT_EQ(v.header, "X-Sensitive: yes");

  MemoryBody clean(crlf(withAttachment("text/plain", "c.txt", cardText(kBrokenCards))));
  v = DlpHook(o).inspect(facts(), clean);
  EXPECT_EQ(v.action, Action::kContinue);
}

TEST(DlpHookTest, OversizeErrorsAndFlows) {
  MemoryBody body(crlf("Subject: x\n\n" + cardText(kCards)));
  DlpOptions o;
  o.detectors = {card()};
  o.on_match = DlpOnMatch::kReject;
  o.max_size = 10;
  Verdict v = DlpHook(o).inspect(facts(), body);
  EXPECT_EQ(v.action, Action::kContinue);
  EXPECT_EQ(v.scan_outcome, "unscanned(oversize)");
  o.on_oversize = OversizeAction::kReject;
  EXPECT_EQ(DlpHook(o).inspect(facts(), body).action, Action::kReject);

  o.max_size = 1 << 20;
  MemoryBody broken(crlf("Subject: x\n\n" + cardText(kCards)));
  broken.fail_at = 5;
  o.on_error = FailureAction::kTempfail;
  EXPECT_EQ(DlpHook(o).inspect(facts(), broken).action, Action::kTempfail);

  // A detector that does not compile: every message fails, never passes silently.
  DlpOptions bad = o;
  bad.detectors[0].pattern = "(";
  EXPECT_THROW(DlpHook(bad).inspect(facts(), body), std::exception);

  // Flows: only authenticated sessions.
  o.when = {ScanWhen{{}, true}};
  EXPECT_EQ(DlpHook(o).inspect(facts(), body).action, Action::kContinue);
  SessionFacts auth = facts();
  auth.authenticated = true;
  EXPECT_EQ(DlpHook(o).inspect(auth, body).action, Action::kReject);
}

TEST(DlpHookTest, FactoryOnlyForSmtpOnItsListeners) {
  DlpOptions o;
  o.detectors = {card()};
  o.when = {ScanWhen{{"mx"}, std::nullopt}};
  auto f = makeDlpFactory(o);
  EXPECT_FALSE(f->usesConnections());
  FilterServices services;
  SessionFacts mx = facts();
  EXPECT_NE(f->create(mx, services), nullptr);
  SessionFacts other = facts();
  other.listener = "sub";
  EXPECT_EQ(f->create(other, services), nullptr);
  SessionFacts imap = facts();
  imap.protocol = "imap";
  EXPECT_EQ(f->create(imap, services), nullptr);
}

}  // namespace
}  // namespace mailgate::filters
