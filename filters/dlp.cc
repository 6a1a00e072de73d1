#include "filters/dlp.h"

#include <re2/re2.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <unordered_set>
#include <utility>

#include "filters/gmime_body.h"
#include "filters/scan_result.h"
#include "gateway/core/log.h"

namespace mailgate::filters {

struct DlpScanner::Compiled {
  std::string id;
  std::unique_ptr<RE2> re;
  DlpValidator validate = DlpValidator::kNone;
  std::vector<std::string> context;  // lower-cased
  uint32_t context_window = 0;
  uint32_t min_count = 1;
};

namespace {

log::RateLimit g_dlp_log(20);

void bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

// 13 to 19 digits, a space or a dash allowed between any two.
constexpr std::string_view kCardPattern = R"(\b(?:[0-9][ -]?){12,18}[0-9]\b)";
// Country, check digits, then 11 to 30 alphanumerics: run together, or in groups of
// four separated by one space (the printed form), the last group shorter.
constexpr std::string_view kIbanPattern =
    R"(\b[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b)";

// IBAN lengths by country (SWIFT IBAN registry).
struct IbanCountry {
  char cc[3];
  uint8_t length;
};
constexpr IbanCountry kIbanLengths[] = {
    {"AD", 24}, {"AE", 23}, {"AL", 28}, {"AT", 20}, {"AZ", 28}, {"BA", 20}, {"BE", 16}, {"BG", 22},
    {"BH", 22}, {"BI", 27}, {"BR", 29}, {"BY", 28}, {"CH", 21}, {"CR", 22}, {"CY", 28}, {"CZ", 24},
    {"DE", 22}, {"DJ", 27}, {"DK", 18}, {"DO", 28}, {"EE", 20}, {"EG", 29}, {"ES", 24}, {"FI", 18},
    {"FK", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22}, {"GE", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27},
    {"GT", 28}, {"HR", 21}, {"HU", 28}, {"IE", 22}, {"IL", 23}, {"IQ", 23}, {"IS", 26}, {"IT", 27},
    {"JO", 30}, {"KW", 30}, {"KZ", 20}, {"LB", 28}, {"LC", 32}, {"LI", 21}, {"LT", 20}, {"LU", 20},
    {"LV", 21}, {"LY", 25}, {"MC", 27}, {"MD", 24}, {"ME", 22}, {"MK", 19}, {"MN", 20}, {"MR", 27},
    {"MT", 31}, {"MU", 30}, {"NI", 28}, {"NL", 18}, {"NO", 15}, {"OM", 23}, {"PK", 24}, {"PL", 28},
    {"PS", 29}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22}, {"RU", 33}, {"SA", 24}, {"SC", 31},
    {"SD", 18}, {"SE", 24}, {"SI", 19}, {"SK", 24}, {"SM", 27}, {"SO", 23}, {"ST", 25}, {"SV", 28},
    {"TL", 23}, {"TN", 24}, {"TR", 26}, {"UA", 29}, {"VA", 22}, {"VG", 24}, {"XK", 20}, {"YE", 30},
};

char upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }
char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isAlnum(char c) { return isDigit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

bool ibanMod97(std::string_view iban) {
  // The first four characters go to the end; letters count as 10..35.
  uint32_t rem = 0;
  auto add = [&rem](char c) {
    if (isDigit(c)) {
      rem = (rem * 10 + static_cast<uint32_t>(c - '0')) % 97;
    } else {
      const uint32_t v = static_cast<uint32_t>(c - 'A') + 10;
      rem = (rem * 100 + v) % 97;
    }
  };
  for (size_t i = 4; i < iban.size(); i++) add(iban[i]);
  for (size_t i = 0; i < 4; i++) add(iban[i]);
  return rem == 1;
}

// The matched text's identity for counting distinct matches: its alphanumerics, case
// folded (so "4111 1111 1111 1111" and "4111-1111-1111-1111" are one), hashed so that
// the scan keeps no matched data.
uint64_t identity(std::string_view m) {
  std::string key;
  key.reserve(m.size());
  for (char c : m)
    if (isAlnum(c)) key.push_back(upper(c));
  if (key.empty()) key.assign(m);  // a custom pattern matching punctuation only
  return std::hash<std::string>{}(key);
}

std::string countsText(const DlpOptions& o, const DlpResult& r, const char* sep) {
  std::string s;
  for (const std::string& id : r.fired) {
    for (const DlpHit& h : r.hits) {
      if (h.id != id) continue;
      if (!s.empty()) s += ", ";
      s += id;
      s += sep;
      s += std::to_string(h.count);
    }
  }
  (void)o;
  return s;
}

Verdict failureVerdict(FailureAction a, std::string reason) {
  Verdict v;
  switch (a) {
    case FailureAction::kAccept:
      v = Verdict::next();
      v.reason = std::move(reason);
      break;
    case FailureAction::kTempfail:
      v = Verdict::of(Action::kTempfail, std::move(reason));
      break;
    case FailureAction::kReject:
      v = Verdict::of(Action::kReject, std::move(reason));
      break;
  }
  v.scan_outcome = std::string(kScanErrorScanner);  // the scan header: it failed, whatever the action
  return v;
}

bool selected(const std::vector<ScanWhen>& when, const SessionFacts& facts, bool check_auth) {
  if (when.empty()) return true;
  return std::any_of(when.begin(), when.end(), [&](const ScanWhen& w) {
    if (!w.listeners.empty() &&
        std::find(w.listeners.begin(), w.listeners.end(), facts.listener) == w.listeners.end())
      return false;
    return !check_auth || !w.authenticated || *w.authenticated == facts.authenticated;
  });
}

bool endsWithNoCase(std::string_view s, std::string_view suffix) {
  if (s.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); i++)
    if (lower(s[s.size() - suffix.size() + i]) != suffix[i]) return false;
  return true;
}

}  // namespace

// One decoded text (a subject, a part's content) scanned a window at a time: the
// buffer holds the octets [base_, base_ + buf_.size()) of the segment. A window's
// matches that start in its last `overlap` octets are left for the next window, which
// keeps those octets and `context` more before them; so a match up to kDlpMaxMatch
// octets long and its context are seen whole wherever the windows split the text.
class DlpSegment {
 public:
  DlpSegment(const DlpScanner& s, DlpResult* out, std::vector<std::unordered_set<uint64_t>>* seen)
      : s_(s),
        out_(out),
        seen_(seen),
        keep_(s.overlap_ + s.context_),
        cap_(kDlpWindow + keep_),
        resume_(s.detectors_.size(), 0) {
    buf_.reserve(cap_);
    out_->largest_buffer = std::max(out_->largest_buffer, buf_.capacity());
  }

  void feed(std::string_view data) {
    while (!data.empty()) {
      const size_t n = std::min(data.size(), cap_ - buf_.size());
      buf_.append(data.data(), n);
      data.remove_prefix(n);
      if (buf_.size() == cap_) {
        process(false);
        // Keep the tail: the deferred matches and the context before them.
        base_ += buf_.size() - keep_;
        buf_.erase(0, buf_.size() - keep_);
      }
    }
  }

  void finish() { process(true); }

 private:
  void process(bool final) {
    const size_t cutoff = final ? buf_.size() : buf_.size() - s_.overlap_;
    const re2::StringPiece text(buf_.data(), buf_.size());
    for (size_t d = 0; d < s_.detectors_.size(); d++) {
      const DlpScanner::Compiled& det = *s_.detectors_[d];
      size_t pos = resume_[d] > base_ ? static_cast<size_t>(resume_[d] - base_) : 0;
      while (pos < cutoff) {
        re2::StringPiece m;
        if (!det.re->Match(text, pos, buf_.size(), RE2::UNANCHORED, &m, 1)) break;
        const size_t start = static_cast<size_t>(m.data() - buf_.data());
        if (start >= cutoff) break;  // the next window sees it with what follows it
        const size_t end = start + m.size();
        consider(d, det, start, end);
        pos = end > start ? end : start + 1;
      }
      resume_[d] = base_ + std::max(pos, cutoff);
    }
  }

  void consider(size_t d, const DlpScanner::Compiled& det, size_t start, size_t end) {
    const std::string_view m(buf_.data() + start, end - start);
    switch (det.validate) {
      case DlpValidator::kNone:
        break;
      case DlpValidator::kLuhn:
        if (!luhnValid(m)) return;
        break;
      case DlpValidator::kIbanMod97:
        if (!ibanValid(m)) return;
        break;
    }
    if (!det.context.empty() && !contextNear(det, start, end)) return;
    auto& seen = (*seen_)[d];
    if (seen.size() >= kDlpMaxDistinct) return;
    if (seen.insert(identity(m)).second) out_->hits[d].count++;
  }

  bool contextNear(const DlpScanner::Compiled& det, size_t start, size_t end) {
    const size_t from = start > det.context_window ? start - det.context_window : 0;
    const size_t to = std::min(buf_.size(), end + det.context_window);
    around_.assign(buf_.data() + from, to - from);
    for (char& c : around_) c = lower(c);
    for (const std::string& w : det.context)
      if (around_.find(w) != std::string::npos) return true;
    return false;
  }

  const DlpScanner& s_;
  DlpResult* out_;
  std::vector<std::unordered_set<uint64_t>>* seen_;
  const size_t keep_;
  const size_t cap_;
  std::string buf_;
  std::string around_;
  uint64_t base_ = 0;
  std::vector<uint64_t> resume_;  // per detector: where its next search starts (segment offset)
};

std::string_view dlpBuiltinPattern(std::string_view name) {
  if (name == "card_number") return kCardPattern;
  if (name == "iban") return kIbanPattern;
  return {};
}

bool luhnValid(std::string_view text) {
  uint32_t sum = 0;
  size_t digits = 0;
  for (size_t i = text.size(); i > 0; i--) {
    const char c = text[i - 1];
    if (!isDigit(c)) continue;
    uint32_t v = static_cast<uint32_t>(c - '0');
    if (digits % 2 == 1) {
      v *= 2;
      if (v > 9) v -= 9;
    }
    sum += v;
    digits++;
  }
  return digits >= 2 && sum % 10 == 0;
}

bool ibanValid(std::string_view text) {
  char iban[35];
  size_t n = 0;
  for (char c : text) {
    if (c == ' ') continue;
    if (!isAlnum(c) || n == sizeof iban) return false;
    iban[n++] = upper(c);
  }
  if (n < 15) return false;
  if (!(iban[0] >= 'A' && iban[0] <= 'Z' && iban[1] >= 'A' && iban[1] <= 'Z' && isDigit(iban[2]) &&
        isDigit(iban[3])))
    return false;
  for (const IbanCountry& c : kIbanLengths) {
    if (c.cc[0] != iban[0] || c.cc[1] != iban[1]) continue;
    if (n < c.length) return false;
    // The printed form's last group may run into a word after it: the country's
    // length decides where the IBAN ends.
    return ibanMod97(std::string_view(iban, c.length));
  }
  return n <= 34 && ibanMod97(std::string_view(iban, n));
}

DlpScanner::~DlpScanner() = default;

std::shared_ptr<const DlpScanner> DlpScanner::build(std::vector<DlpDetector> detectors, std::string* error) {
  std::shared_ptr<DlpScanner> s(new DlpScanner());
  for (DlpDetector& d : detectors) {
    auto c = std::make_unique<Compiled>();
    c->id = std::move(d.id);
    const std::string_view builtin = dlpBuiltinPattern(d.pattern);
    RE2::Options options;
    options.set_log_errors(false);
    c->re = std::make_unique<RE2>(
        builtin.empty() ? re2::StringPiece(d.pattern) : re2::StringPiece(builtin.data(), builtin.size()),
        options);
    if (!c->re->ok()) {
      if (error != nullptr) *error = "detector " + c->id + ": invalid pattern: " + c->re->error();
      return nullptr;
    }
    c->validate = d.validate;
    for (std::string& w : d.context) {
      for (char& ch : w) ch = lower(ch);
      if (!w.empty()) c->context.push_back(std::move(w));
    }
    c->context_window = std::min(d.context_window, kDlpMaxContextWindow);
    c->min_count = std::max<uint32_t>(1, d.min_count);
    if (!c->context.empty()) s->context_ = std::max<size_t>(s->context_, c->context_window);
    s->detectors_.push_back(std::move(c));
  }
  s->overlap_ = kDlpMaxMatch + s->context_;
  return s;
}

namespace {

void startResult(const std::vector<std::unique_ptr<DlpScanner::Compiled>>& detectors, DlpResult* out) {
  *out = DlpResult{};
  for (const auto& d : detectors) out->hits.push_back({d->id, 0});
}

void finishResult(const std::vector<std::unique_ptr<DlpScanner::Compiled>>& detectors, DlpResult* out) {
  for (size_t i = 0; i < detectors.size(); i++)
    if (out->hits[i].count >= detectors[i]->min_count) out->fired.push_back(detectors[i]->id);
}

// The walk over one parsed message: every segment goes through one DlpSegment at a
// time, and the decoded octets scanned stop at `budget`.
class Walker {
 public:
  Walker(const DlpScanner& s, uint64_t budget, std::chrono::steady_clock::time_point deadline, DlpResult* out,
         std::vector<std::unordered_set<uint64_t>>* seen, GmimeBodySource* src)
      : s_(s), budget_(budget), deadline_(deadline), out_(out), seen_(seen), src_(src) {}

  // False when the walk stopped on an error (*error says which).
  bool run(GMimeMessage* msg, std::string* error) {
    const GType multipart_type = g_mime_multipart_get_type();
    const GType message_part_type = g_mime_message_part_get_type();
    const GType part_type = g_mime_part_get_type();
    std::vector<GMimeObject*> stack;
    if (!subject(msg)) return stopped(error);
    if (GMimeObject* top = g_mime_message_get_mime_part(msg)) stack.push_back(top);
    while (!stack.empty()) {
      GMimeObject* obj = stack.back();
      stack.pop_back();
      if (gIsA(obj, multipart_type)) {
        auto* mp = reinterpret_cast<GMimeMultipart*>(obj);
        for (int i = g_mime_multipart_get_count(mp); i > 0; i--)
          if (GMimeObject* child = g_mime_multipart_get_part(mp, i - 1)) stack.push_back(child);
      } else if (gIsA(obj, message_part_type)) {
        GMimeMessage* inner = g_mime_message_part_get_message(reinterpret_cast<GMimeMessagePart*>(obj));
        if (inner != nullptr) {
          if (!subject(inner)) return stopped(error);
          if (GMimeObject* top = g_mime_message_get_mime_part(inner)) stack.push_back(top);
        }
      } else if (gIsA(obj, part_type) && readable(obj)) {
        if (!part(reinterpret_cast<GMimePart*>(obj))) return stopped(error);
      }
    }
    return true;
  }

 private:
  // text/* parts, and parts named like a text file whatever their type.
  static bool readable(GMimeObject* obj) {
    GMimeContentType* ct = g_mime_object_get_content_type(obj);
    if (ct != nullptr && g_mime_content_type_is_type(ct, "text", "*")) return true;
    const char* name = g_mime_object_get_content_disposition_parameter(obj, "filename");
    if (name == nullptr || *name == '\0') name = g_mime_object_get_content_type_parameter(obj, "name");
    if (name == nullptr) return false;
    const std::string_view n(name);
    return endsWithNoCase(n, ".txt") || endsWithNoCase(n, ".csv") || endsWithNoCase(n, ".tsv") ||
           endsWithNoCase(n, ".log");
  }

  bool stopped(std::string* error) {
    if (error != nullptr) *error = why_;
    return false;
  }

  // Feeds the segment within the budget; false when the walk must stop.
  bool feed(DlpSegment& seg, std::string_view data) {
    const uint64_t left = budget_ - out_->scanned;
    if (data.size() > left) {
      data = data.substr(0, static_cast<size_t>(left));
      out_->truncated = true;
    }
    seg.feed(data);
    out_->scanned += data.size();
    if (std::chrono::steady_clock::now() > deadline_) {
      why_ = "scan deadline passed";
      failed_ = true;
      return false;
    }
    return !out_->truncated;
  }

  bool subject(GMimeMessage* msg) {
    const char* subj = g_mime_message_get_subject(msg);
    if (subj == nullptr || *subj == '\0' || out_->truncated) return true;
    out_->parts++;
    DlpSegment seg(s_, out_, seen_);
    feed(seg, subj);
    seg.finish();
    return !failed_;
  }

  bool part(GMimePart* p) {
    if (out_->truncated) return true;
    GMimeDataWrapper* content = g_mime_part_get_content(p);
    if (content == nullptr) return true;
    GMimeStream* raw = g_mime_data_wrapper_get_stream(content);
    if (raw == nullptr) return true;
    if (g_mime_stream_reset(raw) != 0) return true;
    GPtr<GMimeStream> filtered(g_mime_stream_filter_new(raw));
    auto* fs = reinterpret_cast<GMimeStreamFilter*>(filtered.get());
    switch (g_mime_data_wrapper_get_encoding(content)) {
      case GMIME_CONTENT_ENCODING_BASE64:
      case GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE:
      case GMIME_CONTENT_ENCODING_UUENCODE: {
        GPtr<GMimeFilter> dec(g_mime_filter_basic_new(g_mime_data_wrapper_get_encoding(content), FALSE));
        g_mime_stream_filter_add(fs, dec.get());
        break;
      }
      case GMIME_CONTENT_ENCODING_DEFAULT:
      case GMIME_CONTENT_ENCODING_7BIT:
      case GMIME_CONTENT_ENCODING_8BIT:
      case GMIME_CONTENT_ENCODING_BINARY:
        break;
    }
    // Text in another charset is converted, so that detectors see UTF-8 (UTF-16 digits
    // included); a charset iconv does not know is read as it is.
    const char* charset =
        g_mime_object_get_content_type_parameter(reinterpret_cast<GMimeObject*>(p), "charset");
    if (charset != nullptr && g_ascii_strcasecmp(charset, "utf-8") != 0 &&
        g_ascii_strcasecmp(charset, "us-ascii") != 0) {
      if (GMimeFilter* conv = g_mime_filter_charset_new(charset, "UTF-8")) {
        GPtr<GMimeFilter> owned(conv);
        g_mime_stream_filter_add(fs, conv);
      }
    }
    out_->parts++;
    DlpSegment seg(s_, out_, seen_);
    char chunk[16 * 1024];
    for (;;) {
      const ssize_t n = g_mime_stream_read(filtered.get(), chunk, sizeof chunk);
      if (n <= 0) break;
      if (!feed(seg, std::string_view(chunk, static_cast<size_t>(n)))) break;
    }
    if (src_->failed) {
      why_ = src_->error;
      return false;
    }
    if (failed_) return false;
    seg.finish();
    return true;
  }

  const DlpScanner& s_;
  const uint64_t budget_;
  const std::chrono::steady_clock::time_point deadline_;
  DlpResult* out_;
  std::vector<std::unordered_set<uint64_t>>* seen_;
  GmimeBodySource* src_;
  bool failed_ = false;
  std::string why_;
};

}  // namespace

void DlpScanner::scanText(std::string_view text, DlpResult* out) const {
  startResult(detectors_, out);
  std::vector<std::unordered_set<uint64_t>> seen(detectors_.size());
  DlpSegment seg(*this, out, &seen);
  seg.feed(text);
  seg.finish();
  out->scanned = text.size();
  out->parts = 1;
  finishResult(detectors_, out);
}

bool DlpScanner::scan(const MessageBody& body, uint64_t max_bytes,
                      std::chrono::steady_clock::time_point deadline, DlpResult* out,
                      std::string* error) const {
  startResult(detectors_, out);
  gmimeInitOnce();
  std::vector<std::unordered_set<uint64_t>> seen(detectors_.size());
  GmimeBodySource src;
  src.body = &body;
  const uint64_t size = body.size();
  src.limit = std::min({size, max_bytes, static_cast<uint64_t>(G_MAXINT64)});
  out->truncated = size > src.limit;
  bool ok = true;
  {
    GPtr<GMimeStream> stream(newGmimeBodyStream(&src, 0, static_cast<gint64>(src.limit)));
    GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
    g_mime_parser_set_format(parser.get(), GMIME_FORMAT_MESSAGE);
    g_mime_parser_set_persist_stream(parser.get(), TRUE);
    GPtr<GMimeMessage> msg(g_mime_parser_construct_message(parser.get(), nullptr));
    if (src.failed) {
      if (error != nullptr) *error = src.error;
      return false;
    }
    if (msg) {
      Walker w(*this, max_bytes, deadline, out, &seen, &src);
      ok = w.run(msg.get(), error);
    }
  }
  out->largest_buffer = std::max(out->largest_buffer, src.window.capacity());
  finishResult(detectors_, out);
  return ok;
}

DlpStats& dlpStats() {
  static DlpStats s;
  return s;
}

Verdict dlpVerdict(const DlpOptions& o, const DlpResult& r) {
  if (r.fired.empty()) return Verdict::next();
  const std::string reason = "dlp " + o.name + ": " + countsText(o, r, "=");
  switch (o.on_match) {
    case DlpOnMatch::kReject: {
      Verdict v = Verdict::of(Action::kReject, reason);
      v.code = 554;
      v.enhanced = "5.7.1";
      v.text = "Message refused by content policy (DLP: " + countsText(o, r, " x") + ")";
      return v;
    }
    case DlpOnMatch::kQuarantine:
      return Verdict::of(Action::kQuarantine, reason);
    case DlpOnMatch::kTag: {
      Verdict v = Verdict::of(Action::kAddHeader, reason);
      v.header = o.tag_header.empty() ? "X-Mailgate-DLP: " + countsText(o, r, "=") : o.tag_header;
      return v;
    }
  }
  return Verdict::of(Action::kQuarantine, reason);
}

DlpHook::DlpHook(DlpOptions options) : options_(std::move(options)) {
  scanner_ = DlpScanner::build(options_.detectors, &build_error_);
}

Verdict DlpHook::inspect(const SessionFacts& facts, const MessageBody& body) {
  if (!selected(options_.when, facts, true)) return Verdict::next();
  if (!scanner_) throw std::runtime_error("dlp " + options_.name + ": " + build_error_);
  const uint64_t size = body.size();
  if (size > options_.max_size) {
    bump(dlpStats().oversize);
    std::string reason = "dlp " + options_.name + ": message over max_size, not scanned";
    switch (options_.on_oversize) {
      case OversizeAction::kAcceptUnscanned: {
        // Delivered unscanned: the scan header says so (filters/scan_result.h).
        Verdict v = Verdict::of(Action::kContinue, std::move(reason));
        v.scan_outcome = std::string(kScanUnscannedOversize);
        return v;
      }
      case OversizeAction::kTempfail:
        return Verdict::of(Action::kTempfail, std::move(reason));
      case OversizeAction::kReject: {
        Verdict v = Verdict::of(Action::kReject, std::move(reason));
        v.code = 554;
        v.enhanced = "5.3.4";
        v.text = "Message too large to be scanned";
        return v;
      }
    }
  }
  DlpResult r;
  std::string error;
  const auto deadline = std::chrono::steady_clock::now() + options_.scan_timeout;
  if (!scanner_->scan(body, options_.max_size, deadline, &r, &error)) {
    bump(dlpStats().errors);
    if (g_dlp_log.allow())
      log::warn("dlp scan failed",
                {{"session", facts.session_id}, {"scanner", options_.name}, {"error", error}});
    return failureVerdict(options_.on_error, "dlp " + options_.name + ": " + error);
  }
  bump(dlpStats().scanned);
  if (r.truncated) bump(dlpStats().truncated);
  Verdict v = dlpVerdict(options_, r);
  if (!r.fired.empty()) {
    bump(dlpStats().matched);
    // Detector ids and counts only: never the matched text.
    if (g_dlp_log.allow())
      log::info("dlp match", {{"session", facts.session_id},
                              {"scanner", options_.name},
                              {"matches", countsText(options_, r, "=")},
                              {"action", actionName(v.action)},
                              {"scanned_octets", std::to_string(r.scanned)},
                              {"truncated", r.truncated ? "true" : "false"}});
  }
  return v;
}

namespace {

// The hook's factory for the SMTP sessions of the listeners its flows name (whether
// the session is authenticated is known at the data stage: the hook checks it).
class DlpFactory final : public FilterFactory {
 public:
  DlpFactory(std::vector<ScanWhen> when, std::shared_ptr<ContentHook> hook, ContentHookOptions o)
      : when_(std::move(when)), inner_(std::move(hook), std::move(o)) {}
  std::string_view name() const override { return inner_.name(); }
  std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const override {
    if (facts.protocol != "smtp" || !selected(when_, facts, false)) return nullptr;
    return inner_.create(facts, services);
  }
  bool usesConnections() const override { return false; }

 private:
  std::vector<ScanWhen> when_;
  ContentHookFactory inner_;
};

}  // namespace

std::shared_ptr<const FilterFactory> makeDlpFactory(DlpOptions options) {
  ContentHookOptions ho;
  ho.deadline = options.scan_timeout;
  ho.on_error =
      failureVerdict(options.on_error, "dlp " + options.name + ": no answer within the scan timeout");
  std::vector<ScanWhen> when = options.when;
  return std::make_shared<DlpFactory>(std::move(when), std::make_shared<DlpHook>(std::move(options)),
                                      std::move(ho));
}

}  // namespace mailgate::filters
