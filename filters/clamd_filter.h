#pragma once
// The clamd scanner: a data-stage filter that streams the spooled message to clamd
// (INSTREAM, filters/clamd_codec.h) over a connection of the session's own, driven
// on the session's reactor; the message is read from the spool in chunks on the
// content executor. Endpoints are tried in order while they cannot be connected to,
// and also when one closes or resets the connection before it answered (the stream
// starts again from the first octet on the next one); a reply, even an error, or
// the scan deadline ends the scan.
//   over max_size or stream_max -> on_oversize, nothing sent
//   stream: OK            -> continue
//   stream: NAME FOUND    -> 554 5.7.1 Message rejected: virus found (NAME)
//   size limit exceeded   -> on_oversize (like a message over max_size)
//   anything else, a closed connection, the scan deadline -> on_error
// The scanner's circuit breaker (filters/circuit_breaker.h), when it is open, skips
// the scan at once with on_error. The outcome goes into SessionFacts::scan_results
// (filters/scan_result.h).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "filters/circuit_breaker.h"
#include "filters/filter.h"

namespace mailgate::filters {

enum class FailureAction : uint8_t { kAccept, kTempfail, kReject };
enum class OversizeAction : uint8_t { kAcceptUnscanned, kTempfail, kReject };

// Which sessions a scanner applies to: any of these conditions.
struct ScanWhen {
  std::vector<std::string> listeners;  // empty = any
  std::optional<bool> authenticated;   // unset = either
};

struct ClamdOptions {
  std::string name;                    // the scanner's name in the config
  std::vector<std::string> endpoints;  // "unix:/path", "tcp:HOST:PORT", in order
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds scan_timeout{60000};
  uint64_t max_size = 50ull << 20;
  // clamd's StreamMaxLength (clamd.conf; clamd has no command that tells it): a longer
  // message is not sent, on_oversize applies. Chunks are never longer than this.
  uint64_t stream_max = 25ull << 20;
  FailureAction on_error = FailureAction::kTempfail;
  OversizeAction on_oversize = OversizeAction::kAcceptUnscanned;
  std::vector<ScanWhen> when;  // empty = every SMTP session
  std::shared_ptr<CircuitBreaker> breaker;  // null = none
};

// Process-wide counters for /metrics.
struct ClamdStats {
  std::atomic<uint64_t> clean{0};
  std::atomic<uint64_t> infected{0};
  std::atomic<uint64_t> errors{0};    // connect failures on every endpoint, protocol and scanner errors
  std::atomic<uint64_t> timeouts{0};  // scan deadline passed
  std::atomic<uint64_t> oversize{0};  // over max_size, or refused by clamd as too long
  std::atomic<uint64_t> endpoint_failures{0};  // an endpoint that could not be connected to, or lost mid-scan
};
ClamdStats& clamdStats();

class ClamdFactory final : public FilterFactory {
 public:
  explicit ClamdFactory(ClamdOptions options)
      : options_(std::make_shared<const ClamdOptions>(std::move(options))) {}
  std::string_view name() const override { return options_->name; }
  std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const override;

 private:
  std::shared_ptr<const ClamdOptions> options_;
};

}  // namespace mailgate::filters
