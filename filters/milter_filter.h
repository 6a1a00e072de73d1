#pragma once
// A milter (Sendmail/Postfix mail filter, protocol version 6: filters/milter_codec.h)
// as a filter of an SMTP session: one connection a session, of the session's own,
// opened at the first stage the milter applies to, that follows the session through
// its stages as Postfix's smtpd does:
//   connect  OPTNEG, then macros j {daemon_name} {client_addr} {client_port}
//            {client_name} _ and CONNECT
//   helo     HELO
//   mail     macros {auth_authen} {auth_type} i {mail_addr}, MAIL (an earlier
//            transaction that did not reach the end of the body is ABORTed first)
//   rcpt     macro {rcpt_addr}, RCPT
//   data     DATA, the spooled message's header block as HEADERs, EOH, the body in BODY
//            chunks (read from the spool on the content executor), end of body.
// Steps the milter declined at negotiation are not sent; replies it said it will not
// send (SMFIP_NR_*) are not waited for.
//
// Replies at a stage: continue; accept (the milter is done with this message, or
// with the session when given before MAIL); reject / tempfail / a reply code refuse
// the stage (at rcpt: that recipient only); discard: the message is accepted and
// dropped (the client gets 250, the node never sees it). At the end of the body the
// milter's header changes and body replacement are applied to a copy written to an
// anonymous file in the spool directory (the verdict's replacement, what the node
// gets); quarantine holds the message (a tempfail while no quarantine store is
// configured).
//
// A milter that fails (connect error, protocol error, timeout, closed connection) is
// not asked again in this session; its on_error answers this stage and every later
// one (accept: the session goes on without it), as Postfix's milter_default_action.
// The data stage records the outcome in SessionFacts::scan_results: clean, modified,
// rejected, discarded, quarantined, or the shared unscanned/skipped/error outcomes.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "filters/clamd_filter.h"
#include "filters/filter.h"

namespace mailgate::filters {

struct MilterOptions {
  std::string name;                    // the scanner's name in the config
  std::vector<std::string> endpoints;  // "unix:/path", "tcp:HOST:PORT", tried in order
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds scan_timeout{60000};  // each stage's exchange
  uint64_t max_size = 50ull << 20;                // larger messages skip the body steps
  FailureAction on_error = FailureAction::kTempfail;
  OversizeAction on_oversize = OversizeAction::kAcceptUnscanned;
  std::vector<ScanWhen> when;          // empty = every SMTP session
  std::string hostname;                // macro j; empty = gethostname()
  std::string spool_dir = "/var/tmp";  // where a modified message is written
  bool quarantine_store = false;       // hooks.quarantine has a store
  // Each stage's exchange is a scan for the breaker; open: the milter is skipped for
  // the rest of the session with on_error.
  std::shared_ptr<CircuitBreaker> breaker;  // null = none
};

// Process-wide counters for /metrics.
struct MilterStats {
  std::atomic<uint64_t> sessions{0};  // connections negotiated
  std::atomic<uint64_t> refusals{0};  // reject, tempfail, reply code at any stage
  std::atomic<uint64_t> discards{0};
  std::atomic<uint64_t> modified{0};  // messages rewritten (headers or body)
  std::atomic<uint64_t> quarantined{0};
  std::atomic<uint64_t> errors{0};  // connect, protocol, I/O failures
  std::atomic<uint64_t> timeouts{0};
};
MilterStats& milterStats();

class MilterFactory final : public FilterFactory {
 public:
  explicit MilterFactory(MilterOptions options);
  std::string_view name() const override { return options_->name; }
  std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const override;

 private:
  std::shared_ptr<const MilterOptions> options_;
};

// The header block of a message: (name, value as a milter gets it: unfolded lines
// joined by "\n", the one space after the colon dropped unless keep_space) and each
// header's raw octets; body_offset is where the body starts (after the empty line).
struct MilterHeader {
  std::string name;
  std::string value;
  std::string raw;  // as in the message, CRLFs included; empty for a header a milter added or changed
};
// Parses the header block at the start of `head`: the headers up to the empty line
// (or up to a line that is not a header, where the body starts). False when `head`
// ends before that and is not the whole message (`whole`): read more.
bool milterHeaderBlock(std::string_view head, bool whole, bool keep_space, std::vector<MilterHeader>* out,
                       uint64_t* body_offset);

}  // namespace mailgate::filters
