// The scan header: one line with each scanner's outcome in the order they ran; a
// provisional outcome is replaced, odd characters never reach the header, and the
// line stays within RFC 5322's 998 octets.
#include "filters/scan_result.h"

#include <gtest/gtest.h>

namespace mailgate::filters {
namespace {

TEST(ScanResult, NoScannerNoHeader) {
  SessionFacts f;
  EXPECT_EQ(formatScanHeader(f), "");
}

TEST(ScanResult, OneHeaderInTheOrderTheyRan) {
  SessionFacts f;
  recordScanResult(f, "clamav", kScanClean);
  recordScanResult(f, "icap", "clean");
  recordScanResult(f, "dlp", "tagged");
  recordScanResult(f, "rspamd", kScanSkippedBreaker);
  EXPECT_EQ(formatScanHeader(f), "X-Mailgate-Scan: clamav=clean; icap=clean; dlp=tagged; rspamd=skipped(breaker)");
}

TEST(ScanResult, ProvisionalOutcomeIsReplaced) {
  SessionFacts f;
  recordScanResult(f, "clamav", kScanErrorTimeout);
  recordScanResult(f, "dlp", "clean");
  recordScanResult(f, "clamav", kScanUnscannedOversize);
  ASSERT_EQ(f.scan_results.size(), 2u);
  EXPECT_EQ(formatScanHeader(f), "X-Mailgate-Scan: clamav=unscanned(oversize); dlp=clean");
}

TEST(ScanResult, OddCharactersAreReplaced) {
  SessionFacts f;
  recordScanResult(f, "av", "bad\r\nX-Evil: 1; y=z");
  const std::string h = formatScanHeader(f);
  EXPECT_EQ(h, "X-Mailgate-Scan: av=bad__X-Evil__1__y_z");
  recordScanResult(f, "", "");
  EXPECT_EQ(formatScanHeader(f), "X-Mailgate-Scan: av=bad__X-Evil__1__y_z; _=_");
}

TEST(ScanResult, LongListIsCutWithin998Octets) {
  SessionFacts f;
  for (int i = 0; i < 100; i++) recordScanResult(f, "scanner-number-" + std::to_string(i), kScanErrorUnavailable);
  const std::string h = formatScanHeader(f);
  EXPECT_LE(h.size(), 998u);
  EXPECT_EQ(h.substr(h.size() - 5), "; ...");
  EXPECT_EQ(h.find('\r'), std::string::npos);
}

}  // namespace
}  // namespace mailgate::filters
