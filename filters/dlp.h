#pragma once
// The built-in DLP scanner: a content hook (filters/content_hook.h) that walks the
// spooled message's MIME tree with GMime, decodes base64 and quoted-printable (and
// converts the charset to UTF-8) in the parts it reads, and runs RE2 detectors over
// the decoded text, a bounded window at a time.
//
// What is read: the Subject (RFC 2047 decoded) of the message and of every attached
// message/rfc822; every text/* part, inline or attached; and any part whose file name
// ends in .txt, .csv, .tsv or .log whatever its type (application/octet-stream CSV
// exports). Other parts (images, PDF, archives, office files) are not read.
//
// A detector counts the distinct matches (by their alphanumerics, case folded) that
// pass its validator and have one of its context words near them; it fires when the
// count reaches min_count. The verdict, the log line and the tag name detectors and
// counts only, never the matched text.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/clamd_filter.h"  // FailureAction, OversizeAction, ScanWhen
#include "filters/content_hook.h"

namespace re2 {
class RE2;
}

namespace mailgate::filters {

enum class DlpValidator : uint8_t { kNone, kLuhn, kIbanMod97 };
enum class DlpOnMatch : uint8_t { kReject, kQuarantine, kTag };

// Longest match a detector is sure to see whole (a longer one may be cut at a window
// boundary), and the widest context window.
inline constexpr size_t kDlpMaxMatch = 256;
inline constexpr uint32_t kDlpMaxContextWindow = 4096;
inline constexpr size_t kDlpWindow = 64 * 1024;  // new octets scanned per window
// Distinct matches remembered per detector (more are not counted).
inline constexpr uint32_t kDlpMaxDistinct = 10000;

struct DlpDetector {
  std::string id;
  std::string pattern;  // a built-in name (card_number, iban) or an RE2 pattern
  DlpValidator validate = DlpValidator::kNone;
  std::vector<std::string> context;  // any one of them near a match (case-insensitive); empty = none needed
  uint32_t context_window = 100;     // octets before and after the match
  uint32_t min_count = 1;
};

struct DlpOptions {
  std::string name = "dlp";  // the scanner's name in the config
  std::vector<DlpDetector> detectors;
  DlpOnMatch on_match = DlpOnMatch::kQuarantine;
  std::string tag_header;  // "Name: value"; empty = "X-Mailgate-DLP: card=3, iban=1"
  // A message over max_size is not scanned (on_oversize); at most max_size decoded
  // octets are scanned in all.
  uint64_t max_size = 50ull << 20;
  OversizeAction on_oversize = OversizeAction::kAcceptUnscanned;
  FailureAction on_error = FailureAction::kTempfail;
  std::chrono::milliseconds scan_timeout{60000};
  std::vector<ScanWhen> when;  // empty = every SMTP session
};

// The RE2 text of a built-in pattern; empty when name is not one.
std::string_view dlpBuiltinPattern(std::string_view name);

// Luhn (ISO/IEC 7812) over the digits of text; other octets are skipped. False with
// fewer than 2 digits.
bool luhnValid(std::string_view text);
// ISO 13616 IBAN: spaces skipped, letters case-folded; the country's length when it is
// in the registry's table (else 15 to 34), and mod 97 == 1 of the rearranged number.
bool ibanValid(std::string_view text);

struct DlpHit {
  std::string id;
  uint32_t count = 0;  // distinct valid matches found (up to kDlpMaxDistinct)
};

struct DlpResult {
  std::vector<DlpHit> hits;        // every detector, in config order
  std::vector<std::string> fired;  // ids of the detectors with count >= min_count
  uint64_t scanned = 0;            // decoded octets scanned
  uint32_t parts = 0;              // parts (and subjects) scanned
  bool truncated = false;          // max_size decoded octets reached: the rest was not read
  size_t largest_buffer = 0;       // the largest scan buffer held (octets)
};

// The compiled detectors; immutable, thread-safe.
class DlpScanner {
 public:
  // Compiles the detectors; false with *error naming the detector when one does not.
  static std::shared_ptr<const DlpScanner> build(std::vector<DlpDetector> detectors, std::string* error);
  ~DlpScanner();

  // Scans the message, reading at most max_bytes of it and scanning at most max_bytes
  // decoded octets. False with *error on an I/O error of the body or when the deadline
  // passes (checked between windows). Never throws but std::bad_alloc.
  bool scan(const MessageBody& body, uint64_t max_bytes, std::chrono::steady_clock::time_point deadline,
            DlpResult* out, std::string* error) const;
  // The same over a text that is not a message (tests): one segment.
  void scanText(std::string_view text, DlpResult* out) const;

  struct Compiled;

 private:
  DlpScanner() = default;
  std::vector<std::unique_ptr<Compiled>> detectors_;
  size_t overlap_ = kDlpMaxMatch;  // octets kept from one window to the next
  size_t context_ = 0;             // widest context window
  friend class DlpSegment;
};

struct DlpStats {
  std::atomic<uint64_t> scanned{0};    // messages scanned
  std::atomic<uint64_t> matched{0};    // messages on which a detector fired
  std::atomic<uint64_t> errors{0};     // I/O errors, deadline passed
  std::atomic<uint64_t> oversize{0};   // over max_size, not scanned
  std::atomic<uint64_t> truncated{0};  // scanned up to max_size decoded octets only
};
DlpStats& dlpStats();

class DlpHook final : public ContentHook {
 public:
  // A detector that does not compile (the loader checks them first) makes every
  // inspect() fail, so on_error applies: never a silent pass.
  explicit DlpHook(DlpOptions options);
  std::string_view name() const override { return options_.name; }
  Verdict inspect(const SessionFacts& facts, const MessageBody& body) override;
  const DlpOptions& options() const { return options_; }

 private:
  DlpOptions options_;
  std::shared_ptr<const DlpScanner> scanner_;
  std::string build_error_;
};

// What a scan's result means under the options: continue, or on_match's verdict.
Verdict dlpVerdict(const DlpOptions& options, const DlpResult& result);

// The filter factory: a ContentHookFactory over a DlpHook (deadline = scan_timeout,
// its on_error), for the SMTP sessions `when` selects.
std::shared_ptr<const FilterFactory> makeDlpFactory(DlpOptions options);

}  // namespace mailgate::filters
