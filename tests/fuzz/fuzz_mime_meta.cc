// libFuzzer target for the header/attachment-name extraction (filters/mime_meta.h).
// Input: [limit byte][read-step byte][fail byte] message... Invariants: the result
// stays within its limits and is valid UTF-8; reads cut short by the body (any step)
// give the same result; a max_bytes limit gives the same as the message cut there; a
// body I/O error is either reported (error text, empty result) or never reached.
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/mime_meta.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::filters::extractMessageMeta;
using mailgate::filters::kMimeMetaMaxHeaders;
using mailgate::filters::kMimeMetaMaxItemOctets;
using mailgate::filters::kMimeMetaMaxNames;
using mailgate::filters::MessageBody;
using mailgate::filters::MessageMeta;

class FuzzBody final : public MessageBody {
 public:
  explicit FuzzBody(std::string_view s) : s_(s) {}
  uint64_t size() const override { return s_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    if (off + n > fail_at) return false;
    if (off > s_.size()) return false;
    out->assign(s_.substr(off, n < step ? n : step));
    return true;
  }
  size_t step = SIZE_MAX;
  uint64_t fail_at = UINT64_MAX;

 private:
  std::string_view s_;
};

bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xE0) == 0xC0) {
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

void checkBounds(const MessageMeta& m) {
  FUZZ_CHECK(m.headers.size() <= kMimeMetaMaxHeaders);
  FUZZ_CHECK(m.attachment_names.size() <= kMimeMetaMaxNames);
  for (const std::string& h : m.headers) {
    FUZZ_CHECK(h.size() <= kMimeMetaMaxItemOctets);
    FUZZ_CHECK(validUtf8(h));
  }
  for (const std::string& n : m.attachment_names) {
    FUZZ_CHECK(!n.empty());
    FUZZ_CHECK(n.size() <= kMimeMetaMaxItemOctets);
    FUZZ_CHECK(validUtf8(n));
  }
}

bool same(const MessageMeta& a, const MessageMeta& b) {
  return a.headers == b.headers && a.attachment_names == b.attachment_names && a.truncated == b.truncated;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const uint64_t limit = data[0] == 0 ? mailgate::filters::kMimeMetaDefaultMaxBytes : uint64_t{data[0]} * 7;
  const size_t step = 1 + data[1];
  const uint64_t fail_at = uint64_t{data[2]} * 5;
  const std::string_view msg(reinterpret_cast<const char*>(data + 3), size - 3);

  FuzzBody whole(msg);
  MessageMeta a;
  std::string err;
  FUZZ_CHECK(extractMessageMeta(whole, &a, &err, limit));
  checkBounds(a);
  FUZZ_CHECK(a.truncated || msg.size() <= limit);

  FuzzBody pieces(msg);
  pieces.step = step;
  MessageMeta b;
  FUZZ_CHECK(extractMessageMeta(pieces, &b, &err, limit));
  FUZZ_CHECK(same(a, b));

  if (msg.size() > limit) {
    FuzzBody prefix(msg.substr(0, limit));
    MessageMeta c;
    FUZZ_CHECK(extractMessageMeta(prefix, &c, &err));
    FUZZ_CHECK(a.headers == c.headers && a.attachment_names == c.attachment_names);
  }

  FuzzBody failing(msg);
  failing.fail_at = fail_at;
  MessageMeta d;
  d.headers.emplace_back("stale");
  err.clear();
  if (extractMessageMeta(failing, &d, &err, limit)) {
    FUZZ_CHECK(same(a, d));
  } else {
    FUZZ_CHECK(!err.empty());
    FUZZ_CHECK(d.headers.empty() && d.attachment_names.empty());
  }
  return 0;
}
