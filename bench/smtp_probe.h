#pragma once
// SMTP end-of-data latency probe for the benchmark (mailgate-load smtplat): one
// blocking plain-TCP connection (TCP_NODELAY), EHLO once, then `warmup + messages`
// transactions back to back: MAIL FROM, RCPT TO, DATA, the body in one write, and
// then the final ".\r\n" alone; the time from just before that write to the end of
// the final reply's last line is one sample (steady clock, nanoseconds). Warm-up
// transactions are not recorded. Any reply other than 250 / 354 where expected
// counts as an error and ends the run. With dot_with_body, the body and the final
// ".\r\n" go in one write and the sample runs from just before that write.
#include <cstdint>
#include <string>

namespace mailgate::bench {

struct SmtpProbeParams {
  std::string host = "127.0.0.1";
  uint16_t port = 25;
  std::string helo = "probe.bench.invalid";
  std::string from = "probe@bench.invalid";
  std::string to;
  unsigned messages = 200;   // recorded transactions
  unsigned warmup = 20;      // transactions first, not recorded
  size_t size = 10240;       // body bytes (after the headers)
  double timeout = 10.0;     // seconds per reply
  bool dot_with_body = false;  // send ".\r\n" in the same write as the body (timed from that write)
  std::string label;
};

// Prints one JSON line on stdout; returns the process exit code (0: every
// transaction got its 250).
int runSmtpProbe(const SmtpProbeParams& params);

}  // namespace mailgate::bench
