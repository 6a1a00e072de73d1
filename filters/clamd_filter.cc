#include "filters/clamd_filter.h"

#include <algorithm>

#include "filters/clamd_codec.h"
#include "filters/scan_result.h"
#include "gateway/core/log.h"

namespace mailgate::filters {

ClamdStats& clamdStats() {
  static ClamdStats s;
  return s;
}

namespace {

constexpr size_t kChunk = 64 * 1024;       // octets read from the spool and sent per chunk
constexpr size_t kMaxQueued = 4 * kChunk;  // read more only while less than this waits to be sent
constexpr size_t kMaxVirusName = 100;

log::RateLimit g_clamd_log(20);

void bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

Verdict failureVerdict(FailureAction a, std::string reason) {
  switch (a) {
    case FailureAction::kAccept: {
      Verdict v = Verdict::next();
      v.reason = std::move(reason);
      return v;
    }
    case FailureAction::kTempfail:
      return Verdict::of(Action::kTempfail, std::move(reason));
    case FailureAction::kReject:
      return Verdict::of(Action::kReject, std::move(reason));
  }
  return Verdict::of(Action::kTempfail, std::move(reason));
}

class ClamdFilter final : public Filter, public ConnectionHandler {
 public:
  ClamdFilter(std::shared_ptr<const ClamdOptions> o, const FilterServices& s)
      : o_(std::move(o)), content_(s.content), conns_(s.connections) {
    if (conns_) post_ = std::make_shared<const std::function<void(std::function<void()>)>>(conns_->poster());
  }
  // No call into the session here: it is being freed (its connections went first).
  ~ClamdFilter() override { abandonTicket(); }

  std::string_view name() const override { return o_->name; }
  uint32_t stages() const override { return stageBit(Stage::kData); }
  std::chrono::milliseconds deadline() const override { return o_->scan_timeout; }
  // The scan deadline passed (cancel() came first): the provisional outcome recorded
  // when the scan started (error(timeout)) stands.
  Verdict onError() const override {
    bump(clamdStats().timeouts);
    reportFailure();
    return failureVerdict(o_->on_error, "clamd " + o_->name + ": no answer within the scan timeout");
  }
  void cancel() override { stop(); }

  Verdict onStage(Stage stage, SessionFacts& facts, const Resumer& resume) override {
    if (stage != Stage::kData || !selected(facts) || !facts.message) return Verdict::next();
    stop();
    abandonTicket();
    session_id_ = facts.session_id;
    body_ = facts.message;
    size_ = body_->size();
    if (size_ > o_->max_size) {
      recordScanResult(facts, o_->name, kScanUnscannedOversize);
      return oversize("message over max_size");
    }
    if (size_ > o_->stream_max) {
      recordScanResult(facts, o_->name, kScanUnscannedOversize);
      return oversize("message over stream_max (clamd's StreamMaxLength)");
    }
    if (!conns_ || !content_ || !post_) {
      recordScanResult(facts, o_->name, kScanErrorInternal);
      return failure("no connections for scanners in this session");
    }
    if (o_->breaker) {
      // Open: skipped at once (counted by the breaker; its opening was logged once).
      ticket_ = o_->breaker->admit();
      if (!ticket_->allowed) {
        ticket_.reset();
        recordScanResult(facts, o_->name, kScanSkippedBreaker);
        return failureVerdict(o_->on_error, "clamd " + o_->name + ": skipped, circuit breaker open");
      }
    }
    resume_ = resume;
    active_ = true;
    off_ = 0;
    endpoint_ = 0;
    sent_all_ = false;
    parser_ = ClamdReplyParser();
    if (!connectNext()) {
      active_ = false;
      recordScanResult(facts, o_->name, kScanErrorUnavailable);
      return failure("clamd " + o_->name + ": no endpoint could be connected to (" + last_error_ + ")");
    }
    // What stands if the deadline passes; the answer replaces it.
    recordScanResult(facts, o_->name, kScanErrorTimeout);
    return Verdict::pending();
  }

  // --- ConnectionHandler ---
  void onConnected(ConnectionId id) override {
    if (!active_ || id != conn_) return;
    connected_ = true;
    if (!conns_->write(conn_, clamdInstreamCommand())) {
      fail("cannot write to clamd", kScanErrorInternal);
      return;
    }
    readNext();
  }

  void onData(ConnectionId id, std::string_view bytes) override {
    if (!active_ || id != conn_) return;
    const ClamdFeed f = parser_.feed(bytes);
    if (f.status != ClamdStatus::kNeedMore) decide(f.status);
  }

  void onDrained(ConnectionId id) override {
    if (active_ && id == conn_) readNext();
  }

  void onClosed(ConnectionId id, ConnectionEnd end, std::string_view detail) override {
    if (!active_ || id != conn_) return;
    conn_ = 0;
    if (!connected_) {
      bump(clamdStats().endpoint_failures);
      last_error_ = std::string(o_->endpoints[endpoint_]) + ": " + std::string(detail);
      if (g_clamd_log.allow())
        log::warn("clamd endpoint failed", {{"session", session_id_},
                                            {"scanner", o_->name},
                                            {"endpoint", o_->endpoints[endpoint_]},
                                            {"failure", connectionEndName(end)},
                                            {"error", detail}});
      endpoint_++;
      if (!connectNext())
        fail("clamd " + o_->name + ": no endpoint could be connected to (" + last_error_ + ")",
             kScanErrorUnavailable);
      return;
    }
    if (parser_.status() == ClamdStatus::kNeedMore) {
      // Closed or reset before any reply: clamd went away mid-scan. The next
      // endpoint, if any, gets the whole message again.
      bump(clamdStats().endpoint_failures);
      last_error_ = o_->endpoints[endpoint_] + ": connection ended before a reply (" +
                    std::string(connectionEndName(end)) + (detail.empty() ? "" : ": ") + std::string(detail) + ")";
      if (endpoint_ + 1 < o_->endpoints.size()) {
        if (g_clamd_log.allow())
          log::warn("clamd endpoint failed mid-scan, trying the next one",
                    {{"session", session_id_},
                     {"scanner", o_->name},
                     {"endpoint", o_->endpoints[endpoint_]},
                     {"failure", connectionEndName(end)},
                     {"error", detail}});
        restartOnNextEndpoint();
        return;
      }
      fail("clamd " + o_->name + ": " + last_error_, kScanErrorUnavailable);
      return;
    }
    decide(parser_.finish());
  }

 private:
  bool selected(const SessionFacts& facts) const {
    if (o_->when.empty()) return true;
    return std::any_of(o_->when.begin(), o_->when.end(), [&](const ScanWhen& w) {
      if (!w.listeners.empty() &&
          std::find(w.listeners.begin(), w.listeners.end(), facts.listener) == w.listeners.end())
        return false;
      return !w.authenticated || *w.authenticated == facts.authenticated;
    });
  }

  // The scan starts again, from the first octet, on the endpoint after the current one.
  void restartOnNextEndpoint() {
    scan_++;  // a chunk still being read for the old connection is dropped
    reading_ = false;
    off_ = 0;
    sent_all_ = false;
    parser_ = ClamdReplyParser();
    endpoint_++;
    if (!connectNext())
      fail("clamd " + o_->name + ": no endpoint could be connected to (" + last_error_ + ")", kScanErrorUnavailable);
  }

  // Opens the next endpoint that lets an attempt start; false when none is left.
  bool connectNext() {
    connected_ = false;
    while (endpoint_ < o_->endpoints.size()) {
      std::string why;
      conn_ = conns_->open(o_->endpoints[endpoint_], o_->connect_timeout, this, &why);
      if (conn_ != 0) return true;
      bump(clamdStats().endpoint_failures);
      last_error_ = o_->endpoints[endpoint_] + ": " + why;
      endpoint_++;
    }
    return false;
  }

  void readNext() {
    if (!active_ || reading_ || sent_all_ || conn_ == 0) return;
    if (conns_->queued(conn_) >= kMaxQueued) return;  // onDrained() asks again
    if (off_ >= size_) {
      std::string end;
      clamdAppendChunk({}, &end);
      sent_all_ = true;
      if (!conns_->write(conn_, end)) fail("cannot write to clamd", kScanErrorInternal);
      return;
    }
    reading_ = true;
    const uint64_t chunk = std::min<uint64_t>(kChunk, std::max<uint64_t>(o_->stream_max, 1));
    const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, size_ - off_));
    const uint64_t scan = scan_, off = off_;
    auto post = post_;
    auto body = body_;
    ClamdFilter* self = this;
    // The spool is read off the reactor. The answer runs on the reactor only if the
    // session still exists; a stale one (another scan since) is dropped there.
    const bool queued = content_->submit(
        [post, body, off, n, scan, self] {
          std::string buf;
          const bool ok = body->read(off, n, &buf);
          (*post)([self, scan, ok, buf = std::move(buf)] { self->onChunk(scan, ok, buf); });
        },
        o_->scan_timeout);
    if (!queued) {
      reading_ = false;
      fail("content executor queue full", kScanErrorInternal);
    }
  }

  void onChunk(uint64_t scan, bool ok, const std::string& buf) {
    if (scan != scan_ || !active_) return;
    reading_ = false;
    if (!ok || buf.empty()) {
      fail("cannot read the spooled message", kScanErrorInternal);
      return;
    }
    std::string frame;
    frame.reserve(buf.size() + 4);
    clamdAppendChunk(buf, &frame);
    off_ += buf.size();
    if (!conns_->write(conn_, frame)) {
      fail("cannot write to clamd", kScanErrorInternal);
      return;
    }
    readNext();
  }

  void decide(ClamdStatus st) {
    switch (st) {
      case ClamdStatus::kNeedMore:
        return;
      case ClamdStatus::kClean:
        bump(clamdStats().clean);
        reportSuccess();
        finish(Verdict::next(), kScanClean);
        return;
      case ClamdStatus::kFound: {
        bump(clamdStats().infected);
        std::string clean;
        if (!cleanReplyText(parser_.virusName(), &clean, kMaxVirusName) ||
            clean.find_first_of("()") != std::string::npos)
          clean.clear();
        Verdict v =
            Verdict::of(Action::kReject, "clamd " + o_->name + ": virus found: " +
                                             (clean.empty() ? std::string("(name not shown)") : clean));
        v.code = 554;
        v.enhanced = "5.7.1";
        v.text = clean.empty() ? std::string("Message rejected: virus found")
                               : "Message rejected: virus found (" + clean + ")";
        reportSuccess();
        finish(std::move(v), kScanInfected);
        return;
      }
      case ClamdStatus::kSizeLimit:
        // clamd answered: it works, the message is over its StreamMaxLength.
        reportSuccess();
        finish(oversize("clamd " + o_->name +
                        ": INSTREAM size limit exceeded (clamd's StreamMaxLength is below stream_max)"),
               kScanUnscannedOversize);
        return;
      case ClamdStatus::kError: {
        std::string text;
        cleanReplyText(parser_.errorText(), &text, 200);
        fail("clamd " + o_->name + ": " + (text.empty() ? std::string("unreadable reply") : text), kScanErrorScanner);
        return;
      }
    }
  }

  Verdict oversize(std::string reason) {
    bump(clamdStats().oversize);
    switch (o_->on_oversize) {
      case OversizeAction::kAcceptUnscanned: {
        // Marked by the scan header (clamav=unscanned(oversize)).
        if (g_clamd_log.allow())
          log::info("clamd message not scanned: too large, accepted unscanned",
                    {{"session", session_id_}, {"scanner", o_->name}, {"size", size_}, {"reason", reason}});
        Verdict v = Verdict::next();
        v.reason = std::move(reason);
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
    return Verdict::of(Action::kTempfail, std::move(reason));
  }

  // A failure answered at once (no scan pending, or ending now).
  Verdict failure(std::string reason) {
    bump(clamdStats().errors);
    reportFailure();
    if (g_clamd_log.allow())
      log::warn("clamd scan failed", {{"session", session_id_}, {"scanner", o_->name}, {"error", reason}});
    return failureVerdict(o_->on_error, std::move(reason));
  }

  // A failure of the pending scan.
  void fail(std::string reason, std::string_view outcome) {
    if (!active_) return;
    finish(failure(std::move(reason)), outcome);
  }

  // Ends the pending scan: the answer records the outcome in the session's facts.
  void finish(Verdict v, std::string_view outcome) {
    if (!active_) return;
    const Resumer resume = resume_;
    stop();
    resume([v = std::move(v), o = o_, outcome = std::string(outcome)](SessionFacts& facts) {
      recordScanResult(facts, o->name, outcome);
      return v;
    });
  }

  // --- circuit breaker: every scan admitted reports once (success, failure or abandoned).
  void reportSuccess() const {
    if (!ticket_) return;
    const CircuitBreaker::Ticket t = *ticket_;
    ticket_.reset();
    if (o_->breaker->success(t)) log::info("scanner circuit breaker closed: the trial scan succeeded",
                                           {{"scanner", o_->name}});
  }
  void reportFailure() const {
    if (!ticket_) return;
    const CircuitBreaker::Ticket t = *ticket_;
    ticket_.reset();
    if (o_->breaker->failure(t))
      log::warn("scanner circuit breaker opened: scans are skipped (on_error applies)",
                {{"scanner", o_->name}, {"after", t.trial ? "the trial scan failed" : "failures in a row"}});
  }
  void abandonTicket() const {
    if (!ticket_) return;
    o_->breaker->abandon(*ticket_);
    ticket_.reset();
  }

  // Ends the current scan: its connection closes, its chunk still being read is dropped.
  void stop() {
    scan_++;
    active_ = false;
    reading_ = false;
    if (conn_ != 0 && conns_) conns_->close(conn_);
    conn_ = 0;
    resume_ = Resumer();
  }

  std::shared_ptr<const ClamdOptions> o_;
  core::Executor* content_;
  ConnectionHost* conns_;
  std::shared_ptr<const std::function<void(std::function<void()>)>> post_;
  std::string session_id_;
  std::shared_ptr<const MessageBody> body_;
  uint64_t size_ = 0;
  uint64_t off_ = 0;
  size_t endpoint_ = 0;
  ConnectionId conn_ = 0;
  uint64_t scan_ = 0;
  bool active_ = false;
  bool connected_ = false;
  bool reading_ = false;
  bool sent_all_ = false;
  std::string last_error_;
  ClamdReplyParser parser_;
  Resumer resume_;
  mutable std::optional<CircuitBreaker::Ticket> ticket_;  // a scan admitted, not reported yet
};

}  // namespace

std::unique_ptr<Filter> ClamdFactory::create(const SessionFacts& facts,
                                             const FilterServices& services) const {
  if (facts.protocol != "smtp") return nullptr;
  if (!options_->when.empty()) {
    const bool any = std::any_of(options_->when.begin(), options_->when.end(), [&](const ScanWhen& w) {
      return w.listeners.empty() ||
             std::find(w.listeners.begin(), w.listeners.end(), facts.listener) != w.listeners.end();
    });
    if (!any) return nullptr;
  }
  return std::make_unique<ClamdFilter>(options_, services);
}

}  // namespace mailgate::filters
