#include "gateway/admin/metrics.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "gateway/session/scanner_stats.h"
#include "gateway/tls/tls_stream.h"

namespace mailgate::admin {
namespace {

TEST(MetricsEscape, LabelValues) {
  EXPECT_EQ(escapeLabelValue("plain-name_1.2"), "plain-name_1.2");
  EXPECT_EQ(escapeLabelValue(R"(a\b)"), R"(a\\b)");
  EXPECT_EQ(escapeLabelValue(R"(say "hi")"), R"(say \"hi\")");
  EXPECT_EQ(escapeLabelValue("two\nlines"), R"(two\nlines)");
  EXPECT_EQ(escapeLabelValue("\\\"\n"), R"(\\\"\n)");
  EXPECT_EQ(escapeLabelValue(""), "");
  // Other bytes go through unchanged (UTF-8, tabs, carriage return).
  EXPECT_EQ(escapeLabelValue("caf\xc3\xa9\t\r"), "caf\xc3\xa9\t\r");
}

TEST(MetricsEscape, Help) {
  EXPECT_EQ(escapeHelp("a \"quoted\" \\ help\nline"), "a \"quoted\" \\\\ help\\nline");
}

TEST(MetricsFormat, Values) {
  EXPECT_EQ(formatValue(0), "0");
  EXPECT_EQ(formatValue(42), "42");
  EXPECT_EQ(formatValue(0.005), "0.005");
  EXPECT_EQ(formatValue(2.5), "2.5");
  EXPECT_EQ(formatValue(1e300 * 1e300), "+Inf");
}

TEST(MetricsWriter, FamiliesLabelsAndEscaping) {
  std::string out;
  MetricsWriter w(out);
  w.family("mailgate_x_total", "counter", "Things.").sample({{"listener", "imap \"a\"\\\n"}}, uint64_t{3});
  w.single("mailgate_y", "gauge", "One.", 7);
  EXPECT_EQ(out,
            "# HELP mailgate_x_total Things.\n# TYPE mailgate_x_total counter\n"
            "mailgate_x_total{listener=\"imap \\\"a\\\"\\\\\\n\"} 3\n"
            "# HELP mailgate_y One.\n# TYPE mailgate_y gauge\nmailgate_y 7\n");
}

TEST(MetricsWriter, RepeatedFamilyIsLeftOut) {
  std::string out;
  MetricsWriter w(out);
  w.single("mailgate_a", "gauge", "A.", 1);
  w.single("mailgate_a", "gauge", "A.", 2);
  EXPECT_EQ(out, "# HELP mailgate_a A.\n# TYPE mailgate_a gauge\nmailgate_a 1\n");
  EXPECT_EQ(w.started().size(), 2u);
}

TEST(MetricsWriter, Histogram) {
  LatencyHistogram h;
  h.observeMs(3);     // <= 0.005
  h.observeMs(70);    // <= 0.1
  h.observeMs(70000); // above every bound
  std::string out;
  MetricsWriter w(out);
  w.family("mailgate_d_seconds", "histogram", "D.").histogram({{"scanner", "av"}}, h);
  EXPECT_NE(out.find("mailgate_d_seconds_bucket{scanner=\"av\",le=\"0.005\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("mailgate_d_seconds_bucket{scanner=\"av\",le=\"0.05\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("mailgate_d_seconds_bucket{scanner=\"av\",le=\"0.1\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("mailgate_d_seconds_bucket{scanner=\"av\",le=\"30\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("mailgate_d_seconds_bucket{scanner=\"av\",le=\"+Inf\"} 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("mailgate_d_seconds_sum{scanner=\"av\"} 70.073\n"), std::string::npos) << out;
  EXPECT_NE(out.find("mailgate_d_seconds_count{scanner=\"av\"} 3\n"), std::string::npos) << out;
}

TEST(ScanOutcomes, Classes) {
  using session::ScanOutcome;
  EXPECT_EQ(session::classifyScanOutcome("clean"), ScanOutcome::kClean);
  EXPECT_EQ(session::classifyScanOutcome("infected"), ScanOutcome::kInfected);
  EXPECT_EQ(session::classifyScanOutcome("unscanned(oversize)"), ScanOutcome::kOversize);
  EXPECT_EQ(session::classifyScanOutcome("skipped(breaker)"), ScanOutcome::kSkipped);
  EXPECT_EQ(session::classifyScanOutcome("error(timeout)"), ScanOutcome::kTimeout);
  EXPECT_EQ(session::classifyScanOutcome("error(unavailable)"), ScanOutcome::kError);
  EXPECT_EQ(session::classifyScanOutcome("error(scanner)"), ScanOutcome::kError);
  EXPECT_EQ(session::classifyScanOutcome("discarded"), ScanOutcome::kDiscarded);
  EXPECT_EQ(session::classifyScanOutcome("whatever"), ScanOutcome::kOther);
}

TEST(TlsFailures, Classes) {
  using tls::HandshakeFailure;
  auto code = [](int reason) { return ERR_PACK(ERR_LIB_SSL, 0, reason); };
  EXPECT_EQ(tls::classifyHandshakeError(0), HandshakeFailure::kClosed);
  EXPECT_EQ(tls::classifyHandshakeError(code(SSL_R_WRONG_VERSION_NUMBER)), HandshakeFailure::kProtocol);
  EXPECT_EQ(tls::classifyHandshakeError(code(SSL_R_UNSUPPORTED_PROTOCOL)), HandshakeFailure::kVersion);
  EXPECT_EQ(tls::classifyHandshakeError(code(SSL_R_NO_SHARED_CIPHER)), HandshakeFailure::kCipher);
  EXPECT_EQ(tls::classifyHandshakeError(code(SSL_R_TLSV1_ALERT_UNKNOWN_CA)), HandshakeFailure::kCertificate);
  EXPECT_EQ(tls::classifyHandshakeError(code(SSL_R_TLSV1_ALERT_DECODE_ERROR)), HandshakeFailure::kAlert);
  EXPECT_EQ(tls::handshakeFailureName(HandshakeFailure::kCertificate), "certificate");
}

}  // namespace
}  // namespace mailgate::admin
