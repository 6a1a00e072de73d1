// Header fields and attachment names of a spooled message: decoding (RFC 2047, RFC
// 2231), the MIME tree (nested multiparts, attached messages), line endings, broken
// input, every limit, body I/O errors, short reads, and concurrent calls.
#include "filters/mime_meta.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace mailgate::filters {
namespace {

// The message in memory; reads return at most max_read octets and fail from fail_at on.
class MemoryBody final : public MessageBody {
 public:
  explicit MemoryBody(std::string s) : s_(std::move(s)) {}
  uint64_t size() const override { return s_.size() + extra_size; }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    reads++;
    if (off + n > fail_at) return false;
    *out = off < s_.size() ? s_.substr(off, std::min(n, max_read)) : std::string();
    return true;
  }
  size_t max_read = SIZE_MAX;
  uint64_t fail_at = UINT64_MAX;
  uint64_t extra_size = 0;  // claims more octets than it has
  mutable size_t reads = 0;

 private:
  std::string s_;
};

// "\n" → "\r\n": the spool holds CRLF.
std::string crlf(std::string_view s) {
  std::string r;
  for (char c : s) {
    if (c == '\n') r += '\r';
    r += c;
  }
  return r;
}

MessageMeta parse(const std::string& msg, uint64_t max_bytes = kMimeMetaDefaultMaxBytes) {
  MemoryBody body(msg);
  MessageMeta m;
  std::string err;
  EXPECT_TRUE(extractMessageMeta(body, &m, &err, max_bytes)) << err;
  return m;
}

using Names = std::vector<std::string>;
using namespace std::string_literals;

// Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF).
bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; k++) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

const char kMixed[] =
    "From: a@example.org\n"
    "To: b@example.net\n"
    "Subject: invoice\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=\"XX\"\n"
    "\n"
    "preamble\n"
    "--XX\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "see attached\n"
    "--XX\n"
    "Content-Type: application/octet-stream\n"
    "Content-Disposition: attachment; filename=\"invoice.exe\"\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
    "--XX--\n"
    "epilogue\n";

TEST(MimeMeta, PlainMessage) {
  const MessageMeta m =
      parse(crlf("Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\n"
                 "From: Alice <a@example.org>\n"
                 "To: b@example.net\n"
                 "Subject: hello\n"
                 "\n"
                 "body line\n"
                 "filename=\"not-a-name.exe\"\n"));
  EXPECT_EQ(m.headers, (Names{"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000",
                              "From: Alice <a@example.org>", "To: b@example.net", "Subject: hello"}));
  EXPECT_TRUE(m.attachment_names.empty());
  EXPECT_FALSE(m.truncated);
}

TEST(MimeMeta, MixedWithBase64Attachment) {
  const MessageMeta m = parse(crlf(kMixed));
  EXPECT_EQ(m.attachment_names, Names{"invoice.exe"});
  ASSERT_EQ(m.headers.size(), 5u);
  EXPECT_EQ(m.headers[2], "Subject: invoice");
  EXPECT_EQ(m.headers[4], "Content-Type: multipart/mixed; boundary=\"XX\"");
  EXPECT_FALSE(m.truncated);
}

TEST(MimeMeta, NameOnlyInContentType) {
  const MessageMeta m =
      parse(crlf("Content-Type: multipart/mixed; boundary=b\n\n"
                 "--b\n"
                 "Content-Type: application/pdf; name=\"report.pdf\"\n\n"
                 "%PDF\n"
                 "--b\n"
                 "Content-Type: application/zip; name=a.zip\n"
                 "Content-Disposition: attachment; filename=\"b.zip\"\n\n"
                 "PK\n"
                 "--b--\n"));
  // Content-Disposition's filename wins over Content-Type's name.
  EXPECT_EQ(m.attachment_names, (Names{"report.pdf", "b.zip"}));
}

TEST(MimeMeta, Rfc2231Filename) {
  const MessageMeta m =
      parse(crlf("Content-Type: multipart/mixed; boundary=b\n\n"
                 "--b\n"
                 "Content-Type: application/octet-stream\n"
                 "Content-Disposition: attachment; filename*=UTF-8''%D0%BF.exe\n\n"
                 "x\n"
                 "--b\n"
                 "Content-Type: application/octet-stream\n"
                 "Content-Disposition: attachment;\n"
                 " filename*0*=UTF-8''%D1%81%D1%87%D1%91%D1%82;\n"
                 " filename*1=\"-2024.scr\"\n\n"
                 "y\n"
                 "--b--\n"));
  EXPECT_EQ(m.attachment_names, (Names{"\xD0\xBF.exe", "\xD1\x81\xD1\x87\xD1\x91\xD1\x82-2024.scr"}));
}

TEST(MimeMeta, Rfc2047FilenameAndSubject) {
  const MessageMeta m =
      parse(crlf("Subject: =?UTF-8?B?0J/RgNC40LLQtdGC?= =?ISO-8859-1?Q?caf=E9?= viagra\n"
                 "Content-Type: multipart/mixed; boundary=b\n\n"
                 "--b\n"
                 "Content-Type: application/octet-stream; name=\"=?UTF-8?B?0YHRh9GR0YIuZXhl?=\"\n"
                 "Content-Disposition: attachment; filename=\"=?UTF-8?B?0YHRh9GR0YIuZXhl?=\"\n\n"
                 "x\n"
                 "--b--\n"));
  ASSERT_FALSE(m.headers.empty());
  // The space between two encoded-words is not text (RFC 2047 6.2); the one after is.
  EXPECT_EQ(m.headers[0],
            "Subject: \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82"
            "caf\xC3\xA9 viagra");
  EXPECT_EQ(m.attachment_names, Names{"\xD1\x81\xD1\x87\xD1\x91\xD1\x82.exe"});
}

TEST(MimeMeta, NestedAlternativeInsideMixed) {
  const MessageMeta m =
      parse(crlf("Content-Type: multipart/mixed; boundary=outer\n\n"
                 "--outer\n"
                 "Content-Type: multipart/alternative; boundary=inner\n\n"
                 "--inner\n"
                 "Content-Type: text/plain\n\n"
                 "plain\n"
                 "--inner\n"
                 "Content-Type: multipart/related; boundary=deep\n\n"
                 "--deep\n"
                 "Content-Type: text/html\n\n"
                 "<img src=cid:logo>\n"
                 "--deep\n"
                 "Content-Type: image/png; name=logo.png\n"
                 "Content-ID: <logo>\n\n"
                 "png\n"
                 "--deep--\n"
                 "--inner--\n"
                 "--outer\n"
                 "Content-Type: application/x-msdownload\n"
                 "Content-Disposition: attachment; filename=setup.exe\n\n"
                 "MZ\n"
                 "--outer--\n"));
  EXPECT_EQ(m.attachment_names, (Names{"logo.png", "setup.exe"}));
}

TEST(MimeMeta, AttachedMessageWithItsOwnAttachment) {
  const MessageMeta m =
      parse(crlf("From: a@example.org\n"
                 "Subject: Fwd: x\n"
                 "Content-Type: multipart/mixed; boundary=b\n\n"
                 "--b\n"
                 "Content-Type: text/plain\n\n"
                 "forwarded below\n"
                 "--b\n"
                 "Content-Type: message/rfc822\n"
                 "Content-Disposition: attachment; filename=\"original.eml\"\n\n"
                 "From: c@example.com\n"
                 "Subject: inner subject\n"
                 "Content-Type: multipart/mixed; boundary=c\n\n"
                 "--c\n"
                 "Content-Type: text/plain\n\n"
                 "hi\n"
                 "--c\n"
                 "Content-Type: application/javascript\n"
                 "Content-Disposition: attachment; filename=\"payload.js\"\n\n"
                 "alert(1)\n"
                 "--c--\n"
                 "--b\n"
                 "Content-Type: application/octet-stream; name=last.bin\n\n"
                 "z\n"
                 "--b--\n"));
  EXPECT_EQ(m.attachment_names, (Names{"original.eml", "payload.js", "last.bin"}));
  // Only the top-level header fields.
  EXPECT_EQ(m.headers,
            (Names{"From: a@example.org", "Subject: Fwd: x", "Content-Type: multipart/mixed; boundary=b"}));
}

TEST(MimeMeta, SinglePartMessageWithFilename) {
  const MessageMeta m =
      parse(crlf("Content-Type: application/octet-stream\n"
                 "Content-Disposition: attachment; filename=whole.exe\n\n"
                 "MZ\n"));
  EXPECT_EQ(m.attachment_names, Names{"whole.exe"});
}

TEST(MimeMeta, FoldedHeaders) {
  const MessageMeta m =
      parse(crlf("Subject: a very\n"
                 "  long\n"
                 "\tsubject\n"
                 "X-Folded:\n"
                 " value\n"
                 "Content-Type: multipart/mixed;\n"
                 "\tboundary=\"b\"\n\n"
                 "--b\n"
                 "Content-Type: application/octet-stream;\n"
                 "  name=\"folded\n"
                 " .exe\"\n\n"
                 "x\n"
                 "--b--\n"));
  ASSERT_EQ(m.headers.size(), 3u);
  EXPECT_EQ(m.headers[0], "Subject: a very  long\tsubject");
  EXPECT_EQ(m.headers[1], "X-Folded: value");
  EXPECT_EQ(m.headers[2], "Content-Type: multipart/mixed;\tboundary=\"b\"");
  ASSERT_EQ(m.attachment_names.size(), 1u);
  EXPECT_EQ(m.attachment_names[0], "folded .exe");
}

TEST(MimeMeta, LfOnlyLineEndings) {
  const MessageMeta lf = parse(kMixed);
  const MessageMeta crlf_meta = parse(crlf(kMixed));
  EXPECT_EQ(lf.headers, crlf_meta.headers);
  EXPECT_EQ(lf.attachment_names, Names{"invoice.exe"});
}

TEST(MimeMeta, GarbageGivesNoFalseNames) {
  const std::vector<std::string> inputs = {
      "",
      std::string("\0\0\0\xff\xfe", 5),
      "\r\n\r\n\r\n",
      "no header at all, just text with filename=\"x.exe\"\r\n",
      std::string(100000, '\xff'),
      // cut inside the attachment's header block
      crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Disposition: attachment; filena"),
      // a boundary that never comes: the 'attachment' is body text of the first part
      crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
           "--c\nContent-Disposition: attachment; filename=fake.exe\n\nx\n"),
      // unbalanced quotes and parameters
      crlf("Content-Type: multipart/mixed; boundary=\"b\n\n--b\nContent-Disposition: ;;;=\"\n\n"),
  };
  for (const std::string& in : inputs) {
    const MessageMeta m = parse(in);
    EXPECT_TRUE(m.attachment_names.empty()) << in.substr(0, 60) << " → " << m.attachment_names[0];
    for (const std::string& h : m.headers) EXPECT_LE(h.size(), kMimeMetaMaxItemOctets);
  }
}

TEST(MimeMeta, MalformedParametersAreTakenLoosely) {
  // What the header says, as well as it can be read: a rule sees the odd name.
  EXPECT_EQ(parse(crlf("Content-Type: application/octet-stream; name*=\"\n\n")).attachment_names,
            Names{"\""});
  EXPECT_EQ(parse(crlf("Content-Type: application/octet-stream; name*0*=utf-8''%ZZ%; name*1=\n\n"))
                .attachment_names,
            Names{"%ZZ%"});
}

TEST(MimeMeta, InvalidUtf8IsRepaired) {
  const MessageMeta m =
      parse(crlf("Subject: caf\xe9 \xff\n"
                 "Content-Type: application/octet-stream; name=\"\xff\xfe.exe\"\n\n"
                 "x\n"));
  ASSERT_EQ(m.headers.size(), 2u);
  EXPECT_TRUE(validUtf8(m.headers[0]));
  ASSERT_EQ(m.attachment_names.size(), 1u);
  const std::string& n = m.attachment_names[0];
  EXPECT_TRUE(validUtf8(n));
  EXPECT_EQ(n.substr(n.size() - 4), ".exe");
}

TEST(MimeMeta, DeepNestingDoesNotExhaustTheStack) {
  // GMime stops descending at 1024 levels; the walk over the tree is iterative.
  std::string msg;
  for (int i = 0; i < 20000; i++) {
    msg += "Content-Type: multipart/mixed; boundary=b" + std::to_string(i) + "\r\n\r\n--b" +
           std::to_string(i) + "\r\n";
  }
  msg += "Content-Type: application/octet-stream; name=deep.exe\r\n\r\nx\r\n";
  MemoryBody body(msg);
  MessageMeta m;
  std::string err;
  EXPECT_TRUE(extractMessageMeta(body, &m, &err)) << err;
  EXPECT_LE(m.attachment_names.size(), 1u);
}

TEST(MimeMeta, MaxBytesStopsReading) {
  const std::string msg = crlf(kMixed);
  const size_t attachment_at = msg.find("Content-Disposition");
  ASSERT_NE(attachment_at, std::string::npos);
  MemoryBody body(msg);
  MessageMeta m;
  std::string err;
  ASSERT_TRUE(extractMessageMeta(body, &m, &err, attachment_at));
  EXPECT_TRUE(m.truncated);
  EXPECT_TRUE(m.attachment_names.empty());
  EXPECT_EQ(m.headers.size(), 5u);
  // A limit of exactly the size is not a truncation.
  ASSERT_TRUE(extractMessageMeta(body, &m, &err, msg.size()));
  EXPECT_FALSE(m.truncated);
  EXPECT_EQ(m.attachment_names, Names{"invoice.exe"});
}

TEST(MimeMeta, ReadsInChunksNotTheWholeMessage) {
  const std::string big =
      "Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\n"
      "Content-Type: application/octet-stream; name=big.bin\r\n\r\n" +
      std::string(3 << 20, 'A') + "\r\n--XX--\r\n";
  MemoryBody body(big);
  MessageMeta m;
  std::string err;
  ASSERT_TRUE(extractMessageMeta(body, &m, &err));
  EXPECT_EQ(m.attachment_names, Names{"big.bin"});
  EXPECT_GE(body.reads, (3u << 20) / (64u * 1024));  // windows, not one read of everything
}

TEST(MimeMeta, HeaderCountLimit) {
  std::string msg;
  for (size_t i = 0; i < kMimeMetaMaxHeaders + 5; i++) msg += "X-H: " + std::to_string(i) + "\r\n";
  msg += "\r\nbody\r\n";
  const MessageMeta m = parse(msg);
  ASSERT_EQ(m.headers.size(), kMimeMetaMaxHeaders);
  EXPECT_EQ(m.headers.back(), "X-H: " + std::to_string(kMimeMetaMaxHeaders - 1));
  EXPECT_TRUE(m.truncated);

  std::string exact;
  for (size_t i = 0; i < kMimeMetaMaxHeaders; i++) exact += "X-H: v\r\n";
  exact += "\r\n";
  EXPECT_FALSE(parse(exact).truncated);
}

TEST(MimeMeta, NameCountLimit) {
  std::string msg = "Content-Type: multipart/mixed; boundary=b\r\n\r\n";
  for (size_t i = 0; i < kMimeMetaMaxNames + 3; i++) {
    msg += "--b\r\nContent-Type: application/octet-stream; name=n" + std::to_string(i) + ".exe\r\n\r\nx\r\n";
  }
  msg += "--b--\r\n";
  const MessageMeta m = parse(msg);
  ASSERT_EQ(m.attachment_names.size(), kMimeMetaMaxNames);
  EXPECT_EQ(m.attachment_names.front(), "n0.exe");
  EXPECT_EQ(m.attachment_names.back(), "n" + std::to_string(kMimeMetaMaxNames - 1) + ".exe");
  EXPECT_TRUE(m.truncated);
}

TEST(MimeMeta, LongFieldAndNameAreCutOnACharacterBoundary) {
  std::string long_value;
  while (long_value.size() < 2000) long_value += "\xD0\xBF";  // п, two octets
  const MessageMeta m = parse(crlf("Subject: " + long_value +
                                   "\n"
                                   "Content-Type: application/octet-stream; name=\"" +
                                   long_value + ".exe\"\n\nx\n"));
  ASSERT_EQ(m.headers.size(), 2u);
  EXPECT_TRUE(m.truncated);
  // "Subject: " is 9 octets: 989 left, an odd number, so the cut drops half a character.
  EXPECT_EQ(m.headers[0].size(), kMimeMetaMaxItemOctets - 1);
  EXPECT_TRUE(validUtf8(m.headers[0]));
  ASSERT_EQ(m.attachment_names.size(), 1u);
  EXPECT_LE(m.attachment_names[0].size(), kMimeMetaMaxItemOctets);
  EXPECT_EQ(m.attachment_names[0].size() % 2, 0u);

  // Exactly 998 octets is kept whole.
  const std::string fits = "X: " + std::string(kMimeMetaMaxItemOctets - 3, 'a');
  const MessageMeta f = parse(fits + "\r\n\r\n");
  ASSERT_EQ(f.headers.size(), 1u);
  EXPECT_EQ(f.headers[0], fits);
  EXPECT_FALSE(f.truncated);
}

TEST(MimeMeta, IoErrorIsReported) {
  const std::string msg = crlf(kMixed);
  MemoryBody body(msg);
  body.max_read = 100;
  body.fail_at = 300;
  MessageMeta m;
  m.headers.push_back("stale");
  std::string err;
  EXPECT_FALSE(extractMessageMeta(body, &m, &err));
  EXPECT_NE(err.find("cannot read"), std::string::npos) << err;
  EXPECT_TRUE(m.headers.empty());
  EXPECT_TRUE(m.attachment_names.empty());
}

TEST(MimeMeta, BodyShorterThanItsSizeIsAnError) {
  MemoryBody body(crlf(kMixed));
  body.extra_size = 10;
  MessageMeta m;
  std::string err;
  EXPECT_FALSE(extractMessageMeta(body, &m, &err));
  EXPECT_NE(err.find("ends early"), std::string::npos) << err;
}

TEST(MimeMeta, ShortReadsGiveTheSameResult) {
  // The second message (found by the fuzzer) has NULs in a field name: GMime's parser
  // gave another tree when its reads came back short, so the stream fills every read.
  const std::vector<std::string> messages = {
      crlf(kMixed),
      crlf("Subject: Fwd\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
           "Content-Type\0\0\0\0: message/rfc822\n"
           "Content-Disposition: attachment; filename=\"original.eml\"\n\n"
           "From: c@example.com\nContent-Type: multipart/mixed; boundary=c\n\n--c\n"
           "Content-Type: application/javascript\n"
           "Content-Disposition: attachment; filename=\"payload.js\"\n\nalert(1)\n--c--\n--b--\n"s),
  };
  for (const std::string& msg : messages) {
    const MessageMeta whole = parse(msg);
    EXPECT_FALSE(whole.attachment_names.empty());
    for (size_t step : {1u, 2u, 7u, 16u, 4095u}) {
      MemoryBody body(msg);
      body.max_read = step;
      MessageMeta m;
      std::string err;
      ASSERT_TRUE(extractMessageMeta(body, &m, &err)) << err;
      EXPECT_EQ(m.headers, whole.headers) << step;
      EXPECT_EQ(m.attachment_names, whole.attachment_names) << step;
    }
  }
}

TEST(MimeMeta, ConcurrentCalls) {
  const std::string msg = crlf(kMixed);
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (size_t t = 0; t < ok.size(); t++) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; i++) {
        MemoryBody body(msg);
        MessageMeta m;
        std::string err;
        if (extractMessageMeta(body, &m, &err) && m.attachment_names == Names{"invoice.exe"} &&
            m.headers.size() == 5) {
          ok[t]++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int n : ok) EXPECT_EQ(n, 200);
}

}  // namespace
}  // namespace mailgate::filters
