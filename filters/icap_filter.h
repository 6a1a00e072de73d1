#pragma once
// The ICAP scanner (RFC 3507): a data-stage filter that sends the spooled message to
// an ICAP service (filters/icap_codec.h) over a connection of the session's own,
// driven on the session's reactor; the message is read from the spool in chunks on
// the content executor, never whole.
//
// OPTIONS first, once per service and Options-TTL (a process-wide cache: the
// methods, Preview, Allow: 204 and Max-Connections it answered), then RESPMOD (or
// REQMOD) with the message as the encapsulated body behind a small HTTP header, its
// first Preview octets first when the service asks for a preview.
//   204 No Content                                   -> continue
//   200 with X-Infection-Found / X-Virus-ID / X-Violations-Found
//                                                    -> 554 5.7.1 Message rejected: NAME
//   200 with another HTTP status than 2xx (a block page), or a REQMOD answered with
//       an HTTP response                             -> 554 5.7.1 Message rejected by content filter
//   200 with a modified message                      -> on_modified: accept (the modified
//       copy replaces the message: Verdict::replacement), reject, or ignore
//   another status, a closed connection, the scan deadline -> on_error
//   a message over max_size                          -> on_oversize
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "filters/clamd_filter.h"
#include "filters/filter.h"
#include "filters/icap_codec.h"

namespace mailgate::filters {

// What a modified message (a 200 without an infection header) means.
enum class ModifiedAction : uint8_t { kAccept, kReject, kIgnore };

struct IcapOptions {
  std::string name;  // the scanner's name in the config
  IcapUrl url;
  IcapMethod method = IcapMethod::kRespmod;
  ModifiedAction on_modified = ModifiedAction::kAccept;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds scan_timeout{60000};
  uint64_t max_size = 50ull << 20;
  FailureAction on_error = FailureAction::kTempfail;
  OversizeAction on_oversize = OversizeAction::kAcceptUnscanned;
  std::vector<ScanWhen> when;  // empty = every SMTP session
  // A modified message larger than memory_limit is written to an anonymous file in
  // temp_dir (server.spool_dir; empty = /var/tmp) instead of being held in memory.
  std::string temp_dir;
  uint64_t memory_limit = 1ull << 20;
};

// Process-wide counters for /metrics.
struct IcapStats {
  std::atomic<uint64_t> clean{0};
  std::atomic<uint64_t> infected{0};
  std::atomic<uint64_t> modified{0};  // a modified message (whatever on_modified did with it)
  std::atomic<uint64_t> errors{0};    // connect failures, ICAP error statuses, protocol errors
  std::atomic<uint64_t> timeouts{0};
  std::atomic<uint64_t> oversize{0};
  std::atomic<uint64_t> options_requests{0};
};
IcapStats& icapStats();

// The OPTIONS answers, per service URL, until their Options-TTL runs out; and the
// scans in progress per service (its Max-Connections). Thread-safe, bounded.
class IcapOptionsCache {
 public:
  struct Entry {
    std::optional<uint64_t> preview;
    bool allow204 = false;
    uint64_t max_connections = 0;  // 0 = not said
    std::string istag;
    std::chrono::steady_clock::time_point expires;
  };
  static constexpr size_t kMaxEntries = 256;
  static constexpr uint64_t kDefaultTtl = 3600;  // seconds, when OPTIONS says none
  static constexpr uint64_t kMaxTtl = 86400;

  std::optional<Entry> get(const std::string& url, std::chrono::steady_clock::time_point now);
  void put(const std::string& url, Entry e);
  void forget(const std::string& url);
  // A scan slot for url under max (0 = no limit); false when all are taken.
  bool acquire(const std::string& url, uint64_t max);
  void release(const std::string& url);

 private:
  struct Slot {
    std::optional<Entry> entry;
    uint64_t in_use = 0;
  };
  std::mutex mu_;
  std::map<std::string, Slot> slots_;
};
IcapOptionsCache& icapOptionsCache();

class IcapFactory final : public FilterFactory {
 public:
  explicit IcapFactory(IcapOptions options) : options_(std::make_shared<const IcapOptions>(std::move(options))) {}
  std::string_view name() const override { return options_->name; }
  std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const override;

 private:
  std::shared_ptr<const IcapOptions> options_;
};

}  // namespace mailgate::filters
