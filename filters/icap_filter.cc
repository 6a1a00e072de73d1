#include "filters/icap_filter.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "filters/scan_result.h"
#include "gateway/core/log.h"

namespace mailgate::filters {

IcapStats& icapStats() {
  static IcapStats s;
  return s;
}

IcapOptionsCache& icapOptionsCache() {
  static IcapOptionsCache c;
  return c;
}

std::optional<IcapOptionsCache::Entry> IcapOptionsCache::get(const std::string& url,
                                                             std::chrono::steady_clock::time_point now) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = slots_.find(url);
  if (it == slots_.end() || !it->second.entry || it->second.entry->expires <= now) return std::nullopt;
  return it->second.entry;
}

void IcapOptionsCache::put(const std::string& url, Entry e) {
  std::lock_guard<std::mutex> g(mu_);
  if (slots_.size() >= kMaxEntries && slots_.find(url) == slots_.end()) {
    // Bounded: drop the entries no scan uses (a config names few services).
    for (auto it = slots_.begin(); it != slots_.end();) it = it->second.in_use == 0 ? slots_.erase(it) : std::next(it);
    if (slots_.size() >= kMaxEntries) return;
  }
  slots_[url].entry = std::move(e);
}

void IcapOptionsCache::forget(const std::string& url) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = slots_.find(url);
  if (it != slots_.end()) it->second.entry.reset();
}

bool IcapOptionsCache::acquire(const std::string& url, uint64_t max) {
  std::lock_guard<std::mutex> g(mu_);
  if (slots_.size() >= kMaxEntries && slots_.find(url) == slots_.end()) return max == 0;
  Slot& s = slots_[url];
  if (max != 0 && s.in_use >= max) return false;
  s.in_use++;
  return true;
}

void IcapOptionsCache::release(const std::string& url) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = slots_.find(url);
  if (it != slots_.end() && it->second.in_use > 0) it->second.in_use--;
}

namespace {

constexpr size_t kChunk = 64 * 1024;        // octets read from the spool and sent per chunk
constexpr size_t kMaxQueued = 4 * kChunk;   // read more only while less than this waits to be sent
constexpr size_t kWriteBatch = 256 * 1024;  // a modified message goes to its file in batches
constexpr uint64_t kMaxWriteInflight = uint64_t{16} << 20;  // written to the file, not yet on disk
constexpr size_t kMaxName = 100;

log::RateLimit g_icap_log(20);

void bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

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

// FNV-1a, to tell a copy the service sent back unchanged from a modified one.
void fnv(uint64_t* h, std::string_view s) {
  for (unsigned char c : s) {
    *h ^= c;
    *h *= 0x100000001b3ull;
  }
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

// The anonymous file a large modified message is written to (O_TMPFILE, as the
// spool does: nothing is left behind if the process dies). Opened by the first write
// job, on the content executor.
struct TempFile {
  explicit TempFile(std::string d) : dir(d.empty() ? std::string("/var/tmp") : std::move(d)) {}
  ~TempFile() {
    if (fd >= 0) ::close(fd);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  // Writes bytes at off (opening the file first); false and *err on failure.
  bool write(uint64_t off, std::string_view bytes, std::string* err) {
    {
      std::lock_guard<std::mutex> g(mu);
      if (fd < 0) {
        fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
          std::string path = dir + "/mailgate-icap.XXXXXX";
          fd = ::mkostemp(path.data(), O_CLOEXEC);
          if (fd >= 0) ::unlink(path.c_str());
        }
        if (fd < 0) {
          *err = "cannot create a file in " + dir + ": " + std::strerror(errno);
          return false;
        }
      }
    }
    while (!bytes.empty()) {
      const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off));
      if (n < 0) {
        if (errno == EINTR) continue;
        *err = std::string("write failed: ") + std::strerror(errno);
        return false;
      }
      off += static_cast<uint64_t>(n);
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  std::string dir;
  std::mutex mu;
  int fd = -1;
};

// A modified message in its file.
class TempFileBody final : public MessageBody {
 public:
  TempFileBody(std::shared_ptr<TempFile> f, uint64_t size) : f_(std::move(f)), size_(size) {}
  uint64_t size() const override { return size_; }
  bool read(uint64_t off, size_t n, std::string* out) const override {
    if (off > size_) return false;
    n = static_cast<size_t>(std::min<uint64_t>(n, size_ - off));
    out->resize(n);
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::pread(f_->fd, out->data() + got, n - got, static_cast<off_t>(off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  }

 private:
  std::shared_ptr<TempFile> f_;
  uint64_t size_;
};

class IcapFilter final : public Filter, public ConnectionHandler {
 public:
  IcapFilter(std::shared_ptr<const IcapOptions> o, const FilterServices& s)
      : o_(std::move(o)), key_(o_->url.uri()), content_(s.content), conns_(s.connections) {
    if (conns_) post_ = std::make_shared<const std::function<void(std::function<void()>)>>(conns_->poster());
  }
  ~IcapFilter() override { releaseSlot(); }

  std::string_view name() const override { return o_->name; }
  uint32_t stages() const override { return stageBit(Stage::kData); }
  std::chrono::milliseconds deadline() const override { return o_->scan_timeout; }
  Verdict onError() const override {
    bump(icapStats().timeouts);
    if (g_icap_log.allow())
      log::warn("icap scan", {{"session", session_id_},
                              {"scanner", o_->name},
                              {"status", "timeout"},
                              {"verdict", actionName(failureVerdict(o_->on_error, {}).action)}});
    return failureVerdict(o_->on_error, "icap " + o_->name + ": no answer within the scan timeout");
  }
  void cancel() override { stop(); }

  Verdict onStage(Stage stage, SessionFacts& facts, const Resumer& resume) override {
    if (stage != Stage::kData || !selected(facts) || !facts.message) return Verdict::next();
    stop();
    recordScanResult(facts, o_->name, kScanErrorTimeout);  // until the answer replaces it
    session_id_ = facts.session_id;
    body_ = facts.message;
    size_ = body_->size();
    // A verdict given at once records its own outcome (a later answer replaces the
    // timeout recorded above, in finish()).
    auto now = [&facts, this](Verdict v) {
      recordScanResult(facts, o_->name, scanOutcomeOf(v));
      return v;
    };
    if (size_ > o_->max_size) return now(oversize("message over max_size"));
    if (!conns_ || !content_ || !post_) return now(failure("no connections for scanners in this session"));
    resume_ = resume;
    active_ = true;
    std::string why;
    const bool started = [&] {
      if (auto e = icapOptionsCache().get(key_, std::chrono::steady_clock::now())) return startMod(*e, &why);
      return startOptions(&why);
    }();
    if (!started) {
      active_ = false;
      resume_ = Resumer();
      return now(failure("icap " + o_->name + ": " + why));
    }
    return Verdict::pending();
  }

  // --- ConnectionHandler ---
  void onConnected(ConnectionId id) override {
    if (!active_ || id != conn_) return;
    connected_ = true;
    readNext();  // the message follows the head written at the start
  }

  void onData(ConnectionId id, std::string_view bytes) override {
    const uint64_t scan = scan_;
    while (active_ && id == conn_ && scan == scan_ && !bytes.empty()) {
      const IcapFeed f = parser_.feed(bytes);
      bytes.remove_prefix(f.consumed);
      switch (f.status) {
        case IcapStatus::kNeedMore:
          return;
        case IcapStatus::kHeaders:
          onHeaders();
          break;
        case IcapStatus::kBody:
          onBody(f.body);
          break;
        case IcapStatus::kDone:
          onResponse();
          break;
        case IcapStatus::kError:
          fail("protocol error: " + std::string(parser_.error()), "protocol");
          return;
      }
    }
  }

  void onDrained(ConnectionId id) override {
    if (active_ && id == conn_) readNext();
  }

  void onClosed(ConnectionId id, ConnectionEnd end, std::string_view detail) override {
    if (!active_ || id != conn_) return;
    conn_ = 0;
    if (!connected_) {
      fail(std::string(connectionEndName(end)) + ": " + std::string(detail), "connect");
      return;
    }
    // A response that ends with the connection ends there.
    fail("connection ended before the answer: " + std::string(detail), "closed");
  }

 private:
  enum class Phase : uint8_t { kOptions, kMod };

  bool selected(const SessionFacts& facts) const {
    if (o_->when.empty()) return true;
    return std::any_of(o_->when.begin(), o_->when.end(), [&](const ScanWhen& w) {
      if (!w.listeners.empty() &&
          std::find(w.listeners.begin(), w.listeners.end(), facts.listener) == w.listeners.end())
        return false;
      return !w.authenticated || *w.authenticated == facts.authenticated;
    });
  }

  bool open(std::string* why) {
    connected_ = false;
    conn_ = conns_->open(o_->url.address(), o_->connect_timeout, this, why);
    return conn_ != 0;
  }

  bool startOptions(std::string* why) {
    bump(icapStats().options_requests);
    phase_ = Phase::kOptions;
    parser_ = IcapResponseParser();
    if (!open(why)) return false;
    if (!conns_->write(conn_, icapOptionsRequest(o_->url))) {
      *why = "cannot write to the service";
      return false;
    }
    return true;
  }

  bool startMod(const IcapOptionsCache::Entry& e, std::string* why) {
    if (!icapOptionsCache().acquire(key_, e.max_connections)) {
      *why = "the service's Max-Connections (" + std::to_string(e.max_connections) + ") are all in use";
      return false;
    }
    slot_ = true;
    phase_ = Phase::kMod;
    istag_ = e.istag;
    IcapLimits limits;
    limits.max_body = std::max<uint64_t>(2 * o_->max_size, o_->max_size + (1u << 20));
    parser_ = IcapResponseParser(limits);
    off_ = 0;
    in_preview_ = e.preview.has_value();
    limit_ = in_preview_ ? std::min<uint64_t>(*e.preview, size_) : size_;
    sending_ = true;
    waiting_continue_ = false;
    orig_hash_ = kFnvBasis;
    if (!open(why)) return false;
    if (!conns_->write(conn_, icapModRequestHead(o_->method, o_->url, e.preview, e.allow204))) {
      *why = "cannot write to the service";
      return false;
    }
    return true;
  }

  void readNext() {
    if (!active_ || phase_ != Phase::kMod || !sending_ || reading_ || conn_ == 0) return;
    if (conns_->queued(conn_) >= kMaxQueued) return;  // onDrained() asks again
    if (off_ >= limit_) {
      std::string end;
      const bool ieof = in_preview_ && limit_ == size_;
      icapAppendLastChunk(ieof, &end);
      if (in_preview_ && !ieof)
        waiting_continue_ = true;  // the rest after 100 Continue
      else
        in_preview_ = false;
      sending_ = false;
      sent_all_ = !waiting_continue_;
      if (!conns_->write(conn_, end)) fail("cannot write to the service", "error");
      return;
    }
    reading_ = true;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, limit_ - off_));
    const uint64_t scan = scan_, off = off_;
    auto post = post_;
    auto body = body_;
    IcapFilter* self = this;
    // The spool is read off the reactor; the answer runs on the reactor only if the
    // session still exists, and a stale one (another scan since) is dropped there.
    const bool queued = content_->submit(
        [post, body, off, n, scan, self] {
          std::string buf;
          const bool ok = body->read(off, n, &buf);
          (*post)([self, scan, ok, buf = std::move(buf)] { self->onChunk(scan, ok, buf); });
        },
        o_->scan_timeout);
    if (!queued) {
      reading_ = false;
      fail("content executor queue full", "error");
    }
  }

  void onChunk(uint64_t scan, bool ok, const std::string& buf) {
    if (scan != scan_ || !active_) return;
    reading_ = false;
    if (!ok || buf.empty()) {
      fail("cannot read the spooled message", "error");
      return;
    }
    fnv(&orig_hash_, buf);
    std::string frame;
    frame.reserve(buf.size() + 16);
    icapAppendChunk(buf, &frame);
    off_ += buf.size();
    if (!conns_->write(conn_, frame)) {
      fail("cannot write to the service", "error");
      return;
    }
    readNext();
  }

  // --- the response ---

  void onResponse() {
    const IcapResponse& r = parser_.response();
    if (phase_ == Phase::kOptions) {
      onOptions(r);
      return;
    }
    if (r.code == 100) {
      if (!waiting_continue_) {
        fail("100 Continue without a preview", "protocol");
        return;
      }
      waiting_continue_ = false;
      in_preview_ = false;
      parser_.reset();
      limit_ = size_;
      sending_ = true;
      readNext();
      return;
    }
    if (receiving_) {
      receiving_ = false;
      finishReplacement();
      return;
    }
    decide(r);
  }

  void onOptions(const IcapResponse& r) {
    if (r.code != 200) {
      fail("OPTIONS answered " + std::to_string(r.code), "status");
      return;
    }
    const std::string_view method = o_->method == IcapMethod::kRespmod ? "RESPMOD" : "REQMOD";
    if (!r.methods.empty() && !r.offersMethod(method)) {
      fail("the service does not offer " + std::string(method), "status");
      return;
    }
    IcapOptionsCache::Entry e;
    e.preview = r.preview;
    e.allow204 = r.allow204;
    e.max_connections = r.max_connections.value_or(0);
    e.istag = r.istag;
    const uint64_t ttl = std::min(r.options_ttl.value_or(IcapOptionsCache::kDefaultTtl), IcapOptionsCache::kMaxTtl);
    e.expires = std::chrono::steady_clock::now() + std::chrono::seconds(ttl);
    icapOptionsCache().put(key_, e);
    conns_->close(conn_);
    conn_ = 0;
    std::string why;
    if (!startMod(e, &why)) fail(why, "connect");
  }

  // The ICAP headers of a response that carries an encapsulated part.
  void onHeaders() {
    if (phase_ != Phase::kMod) return;  // an OPTIONS body: read and ignored
    const IcapResponse& r = parser_.response();
    if (r.code != 200) return;  // decided at its end
    if (r.infected()) {
      decide(r);
      return;
    }
  }

  void onBody(std::string_view piece) {
    if (!receiving_) {
      if (phase_ != Phase::kMod || parser_.response().code != 200) return;
      // The first piece of a modified message: decide what it is before keeping it.
      const IcapResponse& r = parser_.response();
      if (!startReceiving(r)) return;
    }
    appendReplacement(piece);
  }

  // Whether the body of this 200 is a modified message to keep (true), or the
  // decision is made already (false).
  bool startReceiving(const IcapResponse& r) {
    if (blocked(r)) {
      decide(r);
      return false;
    }
    // The body is read to its end in every case: a service that sends the message
    // back unchanged (no 204) has not modified it. Only accept keeps it.
    receiving_ = true;
    keep_ = o_->on_modified == ModifiedAction::kAccept;
    repl_ = std::string();
    repl_size_ = 0;
    repl_written_ = 0;
    repl_inflight_ = 0;
    repl_jobs_ = 0;
    repl_cr_ = false;
    repl_hash_ = kFnvBasis;
    repl_file_.reset();
    response_done_ = false;
    return true;
  }

  // A 200 that refuses the message without naming a virus: a block page.
  bool blocked(const IcapResponse& r) const {
    if (o_->method == IcapMethod::kReqmod) return r.res_hdr;
    const int http = r.httpStatus();
    return r.res_hdr && (http < 200 || http > 299);
  }

  // Line ends are made CRLF (the node gets CRLF only); a lone CR at the end of a
  // piece waits for the next one.
  void appendReplacement(std::string_view piece) {
    std::string norm;
    norm.reserve(piece.size() + 16);
    for (char c : piece) {
      if (repl_cr_) {
        repl_cr_ = false;
        norm += "\r\n";
        if (c == '\n') continue;
      }
      if (c == '\r') {
        repl_cr_ = true;
      } else if (c == '\n') {
        norm += "\r\n";
      } else {
        norm += c;
      }
    }
    keepReplacement(norm);
  }

  void keepReplacement(std::string_view norm) {
    fnv(&repl_hash_, norm);
    repl_size_ += norm.size();
    if (!keep_) return;
    repl_.append(norm);
    if (!repl_file_ && repl_size_ > o_->memory_limit) repl_file_ = std::make_shared<TempFile>(o_->temp_dir);
    if (repl_file_ && repl_.size() >= kWriteBatch) writeBatch();
  }

  void writeBatch() {
    if (repl_.empty()) return;
    std::string batch;
    batch.swap(repl_);
    const uint64_t off = repl_written_, n = batch.size(), scan = scan_;
    repl_written_ += n;
    repl_inflight_ += n;
    repl_jobs_++;
    if (repl_inflight_ > kMaxWriteInflight) {
      fail("the modified message arrives faster than it can be written", "error");
      return;
    }
    auto post = post_;
    auto file = repl_file_;
    IcapFilter* self = this;
    const bool queued = content_->submit(
        [post, file, off, batch = std::move(batch), scan, self] {
          std::string err;
          const bool ok = file->write(off, batch, &err);
          const uint64_t len = batch.size();
          (*post)([self, scan, ok, len, err] { self->onWritten(scan, ok, len, err); });
        },
        o_->scan_timeout);
    if (!queued) fail("content executor queue full", "error");
  }

  void onWritten(uint64_t scan, bool ok, uint64_t n, const std::string& err) {
    if (scan != scan_ || !active_) return;
    repl_jobs_--;
    repl_inflight_ -= n;
    if (!ok) {
      fail("cannot keep the modified message: " + err, "error");
      return;
    }
    if (response_done_ && repl_jobs_ == 0) replacementReady();
  }

  void finishReplacement() {
    if (repl_cr_) {
      repl_cr_ = false;
      keepReplacement("\r\n");
    }
    response_done_ = true;
    if (repl_file_) writeBatch();
    if (active_ && repl_jobs_ == 0) replacementReady();
  }

  void replacementReady() {
    if (sent_all_ && repl_size_ == size_ && repl_hash_ == orig_hash_) {
      bump(icapStats().clean);
      report("200", "unchanged", {});
      finish(Verdict::next());
      return;
    }
    if (!keep_) {
      modified();
      return;
    }
    bump(icapStats().modified);
    Verdict v = Verdict::next();
    v.reason = "icap " + o_->name + ": modified message accepted";
    if (repl_file_)
      v.replacement = std::make_shared<TempFileBody>(repl_file_, repl_size_);
    else
      v.replacement = std::make_shared<StringBody>(std::move(repl_));
    report("200", "modified, accepted", {});
    finish(std::move(v));
  }

  // A final response that decides without keeping a body.
  void decide(const IcapResponse& r) {
    const std::string code = std::to_string(r.code);
    if (r.code == 204) {
      bump(icapStats().clean);
      report(code, "clean", {});
      finish(Verdict::next());
      return;
    }
    if (r.code != 200) {
      std::string reason;
      cleanReplyText(r.reason, &reason, 100);
      fail("ICAP status " + code + (reason.empty() ? std::string() : " " + reason), "status");
      return;
    }
    if (r.infected()) {
      bump(icapStats().infected);
      std::string clean;
      if (!cleanReplyText(r.infectionName(), &clean, kMaxName)) clean.clear();
      Verdict v = Verdict::of(Action::kReject, "icap " + o_->name + ": infection found: " +
                                                   (clean.empty() ? std::string("(name not shown)") : clean));
      v.code = 554;
      v.enhanced = "5.7.1";
      v.text = clean.empty() ? std::string("Message rejected: virus found") : "Message rejected: " + clean;
      report(code, "infected", clean);
      finish(std::move(v));
      return;
    }
    if (blocked(r)) {
      bump(icapStats().infected);
      Verdict v = Verdict::of(Action::kReject, "icap " + o_->name + ": blocked (HTTP status " +
                                                   std::to_string(r.httpStatus()) + ")");
      v.code = 554;
      v.enhanced = "5.7.1";
      v.text = "Message rejected by content filter";
      report(code, "blocked", {});
      finish(std::move(v));
      return;
    }
    if (r.body == IcapResponse::Body::kNone) {
      fail("200 without a message", "protocol");
      return;
    }
    // Reached with no octet of a body at all.
    fail("200 with an empty message", "protocol");
  }

  // A modified message that is not kept: on_modified reject or ignore.
  void modified() {
    bump(icapStats().modified);
    if (o_->on_modified == ModifiedAction::kReject) {
      Verdict v = Verdict::of(Action::kReject, "icap " + o_->name + ": the service modified the message");
      v.code = 554;
      v.enhanced = "5.7.1";
      v.text = "Message rejected by content filter";
      report("200", "modified, rejected", {});
      finish(std::move(v));
      return;
    }
    Verdict v = Verdict::next();
    v.reason = "icap " + o_->name + ": modified message ignored";
    report("200", "modified, ignored", {});
    finish(std::move(v));
  }

  void report(std::string_view status, std::string_view verdict, std::string_view name) {
    log::info("icap scan", {{"session", session_id_},
                            {"scanner", o_->name},
                            {"status", status},
                            {"verdict", verdict},
                            {"name", name},
                            {"istag", istag_}});
  }

  Verdict oversize(std::string reason) {
    bump(icapStats().oversize);
    reason = "icap " + o_->name + ": " + reason;
    switch (o_->on_oversize) {
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
    return Verdict::of(Action::kTempfail, std::move(reason));
  }

  // A failure answered at once (no scan pending).
  Verdict failure(std::string reason, std::string_view status = "error") {
    bump(icapStats().errors);
    Verdict v = failureVerdict(o_->on_error, std::move(reason));
    if (g_icap_log.allow())
      log::warn("icap scan failed", {{"session", session_id_},
                                     {"scanner", o_->name},
                                     {"status", status},
                                     {"verdict", actionName(v.action)},
                                     {"error", v.reason}});
    return v;
  }

  // A failure of the pending scan.
  void fail(const std::string& why, std::string_view status) {
    if (!active_) return;
    if (status == "protocol" || status == "status") icapOptionsCache().forget(key_);  // ask OPTIONS again
    finish(failure("icap " + o_->name + ": " + why, status));
  }

  void finish(Verdict v) {
    if (!active_) return;
    const Resumer resume = resume_;
    stop();
    resume([v = std::move(v), name = o_->name](SessionFacts& f) {
      recordScanResult(f, name, scanOutcomeOf(v));
      return v;
    });
  }

  void releaseSlot() {
    if (slot_) icapOptionsCache().release(key_);
    slot_ = false;
  }

  // Ends the current scan: its connection closes, its chunk reads and file writes
  // still in flight are dropped when they answer.
  void stop() {
    scan_++;
    active_ = false;
    reading_ = false;
    sending_ = false;
    receiving_ = false;
    waiting_continue_ = false;
    sent_all_ = false;
    if (conn_ != 0 && conns_) conns_->close(conn_);
    conn_ = 0;
    releaseSlot();
    resume_ = Resumer();
    repl_file_.reset();
    std::string().swap(repl_);
  }

  std::shared_ptr<const IcapOptions> o_;
  const std::string key_;
  core::Executor* content_;
  ConnectionHost* conns_;
  std::shared_ptr<const std::function<void(std::function<void()>)>> post_;
  std::string session_id_;
  std::string istag_;
  std::shared_ptr<const MessageBody> body_;
  uint64_t size_ = 0;
  Phase phase_ = Phase::kOptions;
  ConnectionId conn_ = 0;
  uint64_t scan_ = 0;
  bool active_ = false;
  bool connected_ = false;
  bool slot_ = false;
  // Sending the message.
  uint64_t off_ = 0;
  uint64_t limit_ = 0;  // send up to here (the preview, then the whole message)
  bool in_preview_ = false;
  bool sending_ = false;
  bool reading_ = false;
  bool waiting_continue_ = false;
  bool sent_all_ = false;
  uint64_t orig_hash_ = kFnvBasis;
  IcapResponseParser parser_;
  // Receiving a modified message.
  bool receiving_ = false;
  bool keep_ = false;  // on_modified accept: the modified message is kept
  bool response_done_ = false;
  std::string repl_;  // in memory, or the batch not yet written
  std::shared_ptr<TempFile> repl_file_;
  uint64_t repl_size_ = 0;
  uint64_t repl_written_ = 0;
  uint64_t repl_inflight_ = 0;
  unsigned repl_jobs_ = 0;
  bool repl_cr_ = false;
  uint64_t repl_hash_ = kFnvBasis;
  Resumer resume_;
};

}  // namespace

std::unique_ptr<Filter> IcapFactory::create(const SessionFacts& facts, const FilterServices& services) const {
  if (facts.protocol != "smtp") return nullptr;
  if (!options_->when.empty()) {
    const bool any = std::any_of(options_->when.begin(), options_->when.end(), [&](const ScanWhen& w) {
      return w.listeners.empty() ||
             std::find(w.listeners.begin(), w.listeners.end(), facts.listener) != w.listeners.end();
    });
    if (!any) return nullptr;
  }
  return std::make_unique<IcapFilter>(options_, services);
}

}  // namespace mailgate::filters
