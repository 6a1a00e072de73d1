// libFuzzer target for the DLP scan (filters/dlp.h) over arbitrary bytes as a message.
// Input: [limit byte][read-step byte] message... Invariants: the scan never fails on
// a readable body; counts stay within kDlpMaxDistinct and the budget; reads cut short
// by the body (any step) give the same result; the scan buffers stay bounded.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "filters/dlp.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::filters::DlpDetector;
using mailgate::filters::DlpResult;
using mailgate::filters::DlpScanner;
using mailgate::filters::DlpValidator;
using mailgate::filters::MessageBody;

class FuzzBody final : public MessageBody {
 public:
  explicit FuzzBody(std::string_view s) : s_(s) {}
  uint64_t size() const override { return s_.size(); }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    if (off > s_.size()) return false;
    out->assign(s_.substr(off, n < step ? n : step));
    return true;
  }
  size_t step = SIZE_MAX;

 private:
  std::string_view s_;
};

const DlpScanner& scanner() {
  static const std::shared_ptr<const DlpScanner> s = [] {
    DlpDetector card;
    card.id = "card";
    card.pattern = "card_number";
    card.validate = DlpValidator::kLuhn;
    DlpDetector iban;
    iban.id = "iban";
    iban.pattern = "iban";
    iban.validate = DlpValidator::kIbanMod97;
    DlpDetector word;
    word.id = "word";
    word.pattern = "(?i)secret";
    word.context = {"top"};
    word.context_window = 16;
    std::string err;
    return DlpScanner::build({card, iban, word}, &err);
  }();
  return *s;
}

bool same(const DlpResult& a, const DlpResult& b) {
  if (a.hits.size() != b.hits.size() || a.fired != b.fired || a.scanned != b.scanned ||
      a.truncated != b.truncated)
    return false;
  for (size_t i = 0; i < a.hits.size(); i++)
    if (a.hits[i].count != b.hits[i].count) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint64_t limit = data[0] == 0 ? (50ull << 20) : uint64_t{data[0]} * 13;
  const size_t step = 1 + data[1];
  const std::string_view msg(reinterpret_cast<const char*>(data + 2), size - 2);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::hours(1);

  FuzzBody whole(msg);
  DlpResult a;
  std::string err;
  FUZZ_CHECK(scanner().scan(whole, limit, deadline, &a, &err));
  FUZZ_CHECK(a.hits.size() == 3);
  FUZZ_CHECK(a.scanned <= limit);
  FUZZ_CHECK(a.largest_buffer <= 2 * mailgate::filters::kDlpWindow);
  for (const auto& h : a.hits) FUZZ_CHECK(h.count <= mailgate::filters::kDlpMaxDistinct);

  FuzzBody pieces(msg);
  pieces.step = step;
  DlpResult b;
  FUZZ_CHECK(scanner().scan(pieces, limit, deadline, &b, &err));
  FUZZ_CHECK(same(a, b));

  // The same bytes as plain text: no crash, bounded.
  DlpResult c;
  scanner().scanText(msg, &c);
  FUZZ_CHECK(c.scanned == msg.size());
  return 0;
}
