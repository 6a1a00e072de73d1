#include "filters/milter_filter.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>

#include "filters/milter_codec.h"
#include "filters/scan_result.h"
#include "gateway/core/log.h"

namespace mailgate::filters {

MilterStats& milterStats() {
  static MilterStats s;
  return s;
}

namespace {

constexpr size_t kReadChunk = 64 * 1024;       // octets read from the spool at a time
constexpr size_t kMaxHeaderBlock = 1u << 20;   // a longer header block is not sent
constexpr size_t kMaxQueued = 4 * kReadChunk;  // body read on only while less than this waits to be sent
constexpr size_t kMaxHeaders = 10000;          // headers a milter may leave in the message

log::RateLimit g_milter_log(20);

void bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

bool ieq(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x >= 'A' && x <= 'Z' ? x + 32 : x) == (y >= 'A' && y <= 'Z' ? y + 32 : y);
         });
}

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


// A header value from a milter as it goes into the message: "\n" (or "\r\n") between
// folded lines becomes CRLF; each continuation must start with white space. False
// for a value that would break the message (a CR alone, a line that is not folded).
bool foldedValue(std::string_view v, std::string* out) {
  out->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    const char c = v[i];
    if (c == '\r') {
      if (i + 1 >= v.size() || v[i + 1] != '\n') return false;
      continue;
    }
    if (c == '\n') {
      if (i + 1 >= v.size() || (v[i + 1] != ' ' && v[i + 1] != '\t')) return false;
      out->append("\r\n");
      continue;
    }
    if (c == '\0') return false;
    out->push_back(c);
  }
  return true;
}

bool validHeaderName(std::string_view n) {
  if (n.empty() || n.size() > 200) return false;
  return std::all_of(n.begin(), n.end(), [](char c) { return c > 32 && c < 127 && c != ':'; });
}

// A body from a milter with CRLF line ends (bare LFs become CRLF), ending in CRLF.
void appendCrlfBody(std::string_view chunk, bool* last_cr, std::string* out) {
  for (char c : chunk) {
    if (c == '\n' && !*last_cr) out->push_back('\r');
    out->push_back(c);
    *last_cr = c == '\r';
  }
}

bool writeAll(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

int openTemp(const std::string& dir, std::string* err) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    std::string path = dir + "/mailgate-milter.XXXXXX";
    fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(path.c_str());
  }
  if (fd < 0) *err = "cannot create a file in " + dir + ": " + std::strerror(errno);
  return fd;
}

// Writes the rewritten message: the headers, then the milter's body or the original
// one streamed from the spool. Runs on the content executor.
std::shared_ptr<const MessageBody> writeMessage(const std::string& dir,
                                                const std::vector<MilterHeader>& headers, bool leading_space,
                                                const std::shared_ptr<const MessageBody>& body,
                                                uint64_t body_off, const std::string* new_body,
                                                std::string* err) {
  const int fd = openTemp(dir, err);
  if (fd < 0) return nullptr;
  auto out = std::make_shared<FileBody>(fd, 0);  // closes fd on every path
  std::string block;
  for (const auto& h : headers) {
    if (!h.raw.empty()) {
      block += h.raw;
      continue;
    }
    block += h.name;
    block += ':';
    if (!leading_space && !h.value.empty()) block += ' ';
    block += h.value;
    block += "\r\n";
  }
  block += "\r\n";
  uint64_t size = block.size();
  if (!writeAll(fd, block)) {
    *err = std::string("write failed: ") + std::strerror(errno);
    return nullptr;
  }
  if (new_body) {
    if (!writeAll(fd, *new_body)) {
      *err = std::string("write failed: ") + std::strerror(errno);
      return nullptr;
    }
    size += new_body->size();
  } else {
    std::string buf;
    for (uint64_t off = body_off; off < body->size(); off += buf.size()) {
      if (!body->read(off, kReadChunk, &buf) || buf.empty()) {
        *err = "cannot read the spooled message";
        return nullptr;
      }
      if (!writeAll(fd, buf)) {
        *err = std::string("write failed: ") + std::strerror(errno);
        return nullptr;
      }
      size += buf.size();
    }
  }
  return std::make_shared<FileBody>(::dup(fd), size);
}

// One request to the milter, its packet built when queued; sent unless the milter
// declined the step (skip_if), waited for unless it said it will not reply (no_reply_if).
struct Request {
  std::string bytes;
  uint32_t skip_if = 0;
  uint32_t no_reply_if = 0;
  bool wait = true;
};

enum class DataPhase : uint8_t { kNone, kHeaders, kBody, kEob, kWriting };

class MilterFilter final : public Filter, public ConnectionHandler {
 public:
  MilterFilter(std::shared_ptr<const MilterOptions> o, const FilterServices& s)
      : o_(std::move(o)), content_(s.content), conns_(s.connections) {
    if (conns_) post_ = std::make_shared<const std::function<void(std::function<void()>)>>(conns_->poster());
  }
  // The session closes its connections itself.
  ~MilterFilter() override { abandonTicket(); }

  std::string_view name() const override { return o_->name; }
  uint32_t stages() const override {
    return stageBit(Stage::kConnect) | stageBit(Stage::kHelo) | stageBit(Stage::kMail) |
           stageBit(Stage::kRcpt) | stageBit(Stage::kData);
  }
  std::chrono::milliseconds deadline() const override { return o_->scan_timeout; }
  Verdict onError() const override {
    // The chain's deadline passed (cancel() came first and closed the milter for the session).
    bump(milterStats().timeouts);
    bump(milterStats().errors);
    reportFailure();
    if (g_milter_log.allow())
      log::warn("milter failed", {{"session", session_id_},
                                  {"scanner", o_->name},
                                  {"stage", stageName(stage_)},
                                  {"error", "no answer within the timeout"},
                                  {"on_error", onErrorName()}});
    return failureVerdict(o_->on_error, "milter " + o_->name + ": no answer within the timeout");
  }
  void cancel() override {
    // The stage is abandoned (deadline, session closing): the exchange is out of step.
    // Logged by onError() when it is the deadline.
    if (active_) broken("no answer within the timeout", false, kScanErrorTimeout);
  }

  Verdict onStage(Stage stage, SessionFacts& facts, const Resumer& resume) override {
    if (!selected(facts)) return Verdict::next();
    if (failed_) {
      if (stage == Stage::kData) recordScanResult(facts, o_->name, fail_outcome_);
      return failureVerdict(o_->on_error, "milter " + o_->name + ": " + fail_reason_);
    }
    if (done_session_) {
      if (stage == Stage::kData) recordScanResult(facts, o_->name, kScanClean);
      return Verdict::next();
    }
    session_id_ = facts.session_id;
    stage_ = stage;
    outcome_ = kScanClean;
    // Stages where the milter has nothing to be asked.
    if (stage == Stage::kAuth || stage == Stage::kClose) return Verdict::next();
    if (stage == Stage::kRcpt && done_message_) return Verdict::next();
    if (stage == Stage::kData && (done_message_ || !facts.message)) return endOfMessage(facts);
    if (stage == Stage::kData && facts.message->size() > o_->max_size) return oversize(facts);
    if (o_->breaker) {
      // Open: skipped for the rest of the session (counted by the breaker; its opening was logged once).
      ticket_ = o_->breaker->admit();
      if (!ticket_->allowed) {
        ticket_.reset();
        broken("skipped, circuit breaker open", false, kScanSkippedBreaker);
        if (stage == Stage::kData) recordScanResult(facts, o_->name, kScanSkippedBreaker);
        return failureVerdict(o_->on_error, "milter " + o_->name + ": skipped, circuit breaker open");
      }
    }
    resume_ = resume;
    if (!conns_ || !content_ || !post_) return failNow(facts, "no connections for scanners in this session");
    if (conn_ == 0) {
      endpoint_ = 0;
      if (!connectNext())
        return failNow(facts, "no endpoint could be connected to (" + last_error_ + ")",
                       kScanErrorUnavailable);
      queueOptneg();
      queueConnect(facts);
      if (stage > Stage::kHelo && !facts.helo.empty()) queueHelo(facts);  // a milter that starts late
    }
    switch (stage) {
      case Stage::kConnect:
        break;
      case Stage::kHelo:
        queueHelo(facts);
        break;
      case Stage::kAuth:
      case Stage::kClose:
        return Verdict::next();
      case Stage::kMail:
        if (in_message_) queueAbort();
        done_message_ = false;
        discard_ = discard_session_;
        in_message_ = true;
        queueMail(facts);
        break;
      case Stage::kRcpt:
        queueRcpt(facts);
        break;
      case Stage::kData:
        startData(facts);
        break;
    }
    active_ = true;
    in_pump_ = true;
    pump();
    in_pump_ = false;
    if (!active_) {  // answered already (every step without a reply, or a failure)
      if (stage == Stage::kData) recordScanResult(facts, o_->name, answer_outcome_);
      return std::move(answer_);
    }
    // What stands if the deadline passes.
    if (stage == Stage::kData) recordScanResult(facts, o_->name, kScanErrorTimeout);
    return Verdict::pending();
  }

  // --- ConnectionHandler ---
  void onConnected(ConnectionId id) override {
    if (id != conn_) return;
    connected_ = true;
  }

  void onData(ConnectionId id, std::string_view bytes) override {
    if (id != conn_ || failed_) return;
    while (!bytes.empty()) {
      const MilterFeed f = parser_.feed(bytes);
      bytes.remove_prefix(f.consumed);
      if (f.status == MilterStatus::kNeedMore) return;
      if (f.status == MilterStatus::kError) {
        fail("protocol error: " + std::string(parser_.errorText()));
        return;
      }
      if (!onReply(parser_.reply())) return;
    }
  }

  void onDrained(ConnectionId id) override {
    if (id == conn_ && active_ && drain_wait_) {
      drain_wait_ = false;
      pump();
    }
  }

  void onClosed(ConnectionId id, ConnectionEnd end, std::string_view detail) override {
    if (id != conn_) return;
    conn_ = 0;
    if (!connected_) {
      bump(milterStats().errors);
      last_error_ = o_->endpoints[endpoint_] + ": " + std::string(detail);
      if (g_milter_log.allow())
        log::warn("milter endpoint failed", {{"session", session_id_},
                                             {"scanner", o_->name},
                                             {"endpoint", o_->endpoints[endpoint_]},
                                             {"failure", connectionEndName(end)},
                                             {"error", detail}});
      endpoint_++;
      if (connectNext()) {
        // The requests queued for the first endpoint go to this one.
        queue_.insert(queue_.begin(), sent_.begin(), sent_.end());
        sent_.clear();
        awaiting_ = false;
        parser_ = MilterReplyParser();
        if (active_) pump();
        return;
      }
      fail("no endpoint could be connected to (" + last_error_ + ")", kScanErrorUnavailable);
      return;
    }
    fail(std::string("connection ended (") + std::string(connectionEndName(end)) +
             (detail.empty() ? std::string() : ": " + std::string(detail)) + ")",
         kScanErrorUnavailable);
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

  bool connectNext() {
    connected_ = false;
    while (endpoint_ < o_->endpoints.size()) {
      std::string why;
      conn_ = conns_->open(o_->endpoints[endpoint_], o_->connect_timeout, this, &why);
      if (conn_ != 0) return true;
      bump(milterStats().errors);
      last_error_ = o_->endpoints[endpoint_] + ": " + why;
      endpoint_++;
    }
    return false;
  }

  // --- requests ---
  void push(std::string bytes, uint32_t skip_if, uint32_t no_reply_if, bool wait = true) {
    queue_.push_back(Request{std::move(bytes), skip_if, no_reply_if, wait});
  }

  void queueOptneg() {
    std::string b;
    milterOptneg(kMilterOfferedActions, kMilterOfferedProtocol, &b);
    push(std::move(b), 0, 0);
  }

  void queueConnect(const SessionFacts& f) {
    const bool v6 = f.client_ip.find(':') != std::string::npos;
    const std::string host = f.client_ip.empty() ? std::string("unknown") : "[" + f.client_ip + "]";
    std::string b;
    milterMacros(MilterCommand::kConnect,
                 {{"j", hostname()},
                  {"{daemon_name}", "mailgate"},
                  {"{client_addr}", f.client_ip},
                  {"{client_port}", std::to_string(f.client_port)},
                  {"{client_name}", "unknown"},
                  {"_", "unknown [" + f.client_ip + "]"},
                  {"{if_addr}", f.local_ip}},
                 &b);
    milterConnect(host, f.client_ip.empty() ? 'U' : (v6 ? '6' : '4'), f.client_port, f.client_ip, &b);
    push(std::move(b), milter_proto::kNoConnect, milter_proto::kNrConnect);
  }

  void queueHelo(const SessionFacts& f) {
    std::string b;
    if (f.secured) milterMacros(MilterCommand::kHelo, {{"{tls_version}", f.tls_version}}, &b);
    milterHelo(f.helo, &b);
    push(std::move(b), milter_proto::kNoHelo, milter_proto::kNrHelo);
  }

  void queueAbort() {
    std::string b;
    milterAbort(&b);
    push(std::move(b), 0, 0, false);
    in_message_ = false;
  }

  void queueMail(const SessionFacts& f) {
    queue_id_ = f.session_id;
    std::string b;
    MilterMacros m;
    if (f.authenticated) {
      m.emplace_back("{auth_authen}", f.user);
      m.emplace_back("{auth_type}", f.method == "plain" ? std::string("PLAIN") : f.method);
    }
    m.emplace_back("i", queue_id_);
    m.emplace_back("{mail_addr}", f.from.value_or(""));
    milterMacros(MilterCommand::kMail, m, &b);
    milterMail({f.mail_path.empty() ? "<" + f.from.value_or("") + ">" : f.mail_path}, &b);
    push(std::move(b), milter_proto::kNoMail, milter_proto::kNrMail);
  }

  void queueRcpt(const SessionFacts& f) {
    std::string b;
    milterMacros(MilterCommand::kRcpt, {{"{rcpt_addr}", f.rcpt}}, &b);
    milterRcpt({"<" + f.rcpt + ">"}, &b);
    push(std::move(b), milter_proto::kNoRcpt, milter_proto::kNrRcpt);
  }

  // Sends queued requests until one needs a reply (or the queue is empty: stageSent()).
  void pump() {
    while (active_ && !awaiting_ && !drain_wait_) {
      if (queue_.empty()) {
        stageSent();
        return;
      }
      Request r = std::move(queue_.front());
      queue_.pop_front();
      if (negotiated_ && (protocol_ & r.skip_if)) continue;
      const bool wait = r.wait && !(negotiated_ && (protocol_ & r.no_reply_if));
      if (!conns_->write(conn_, r.bytes)) {
        fail("cannot write to the milter", kScanErrorUnavailable);
        return;
      }
      if (!negotiated_) sent_.push_back(r);  // resent to the next endpoint if this one fails to connect
      if (wait) {
        awaiting_ = true;
        return;
      }
      if (conns_->queued(conn_) >= kMaxQueued) drain_wait_ = true;
    }
  }

  // Everything of the stage so far is sent and answered.
  void stageSent() {
    if (stage_ != Stage::kData) {
      finish(Verdict::next());
      return;
    }
    switch (phase_) {
      case DataPhase::kNone:
      case DataPhase::kWriting:
        return;
      case DataPhase::kHeaders:
        return;  // the header block is being read
      case DataPhase::kBody:
        readBody();
        return;
      case DataPhase::kEob:
        return;  // the end of body's replies come
    }
  }

  // --- the data stage ---
  void startData(const SessionFacts& f) {
    body_ = f.message;
    headers_.clear();
    new_body_.reset();
    quarantine_.clear();
    modified_ = false;
    skip_body_ = false;
    eob_sent_ = false;
    body_off_ = 0;
    head_.clear();
    phase_ = DataPhase::kHeaders;
    // DATA (Postfix sends it before the headers; a milter may decline it).
    std::string b;
    milterMacros(MilterCommand::kData, {{"i", queue_id_}}, &b);
    milterAppendPacket(MilterCommand::kData, {}, &b);
    push(std::move(b), milter_proto::kNoData, milter_proto::kNrData);
    readHead();
  }

  void readHead() {
    reading_ = true;
    const uint64_t off = head_.size();
    const uint64_t gen = gen_;
    auto body = body_;
    auto post = post_;
    MilterFilter* self = this;
    const bool queued = content_->submit(
        [post, body, off, gen, self] {
          std::string buf;
          const bool ok = body->read(off, kReadChunk, &buf);
          (*post)([self, gen, ok, buf = std::move(buf)] { self->onHead(gen, ok, buf); });
        },
        o_->scan_timeout);
    if (!queued) {
      reading_ = false;
      fail("content executor queue full", kScanErrorInternal);
    }
  }

  void onHead(uint64_t gen, bool ok, const std::string& buf) {
    if (gen != gen_ || !active_) return;
    reading_ = false;
    if (!ok) {
      fail("cannot read the spooled message", kScanErrorInternal);
      return;
    }
    head_ += buf;
    const bool whole = buf.empty() || head_.size() >= body_->size();
    std::vector<MilterHeader> hs;
    uint64_t body_off = 0;
    const bool keep_space = negotiated_ && (protocol_ & milter_proto::kHeaderLeadingSpace);
    if (!milterHeaderBlock(head_, whole, keep_space, &hs, &body_off)) {
      if (head_.size() > kMaxHeaderBlock) {
        fail("header block over " + std::to_string(kMaxHeaderBlock) + " octets");
        return;
      }
      readHead();
      return;
    }
    std::string().swap(head_);
    headers_ = std::move(hs);
    body_off_ = body_off;
    for (const auto& h : headers_) {
      std::string b;
      milterHeader(h.name, h.value, &b);
      push(std::move(b), milter_proto::kNoHeaders, milter_proto::kNrHeader);
    }
    std::string b;
    milterMacros(MilterCommand::kEoh, {{"i", queue_id_}}, &b);
    milterEoh(&b);
    push(std::move(b), milter_proto::kNoEoh, milter_proto::kNrEoh);
    phase_ = DataPhase::kBody;
    read_off_ = body_off_;
    pump();
  }

  void readBody() {
    if (reading_) return;
    if (skip_body_ || (protocol_ & milter_proto::kNoBody) || read_off_ >= body_->size()) {
      phase_ = DataPhase::kEob;
      std::string b;
      milterMacros(MilterCommand::kBodyEob, {{"i", queue_id_}}, &b);
      milterEob(&b);
      push(std::move(b), 0, 0);
      eob_sent_ = true;
      pump();
      return;
    }
    reading_ = true;
    const uint64_t off = read_off_;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kMilterChunk, body_->size() - off));
    const uint64_t gen = gen_;
    auto body = body_;
    auto post = post_;
    MilterFilter* self = this;
    const bool queued = content_->submit(
        [post, body, off, n, gen, self] {
          std::string buf;
          const bool ok = body->read(off, n, &buf);
          (*post)([self, gen, ok, buf = std::move(buf)] { self->onBodyChunk(gen, ok, buf); });
        },
        o_->scan_timeout);
    if (!queued) {
      reading_ = false;
      fail("content executor queue full", kScanErrorInternal);
    }
  }

  void onBodyChunk(uint64_t gen, bool ok, const std::string& buf) {
    if (gen != gen_ || !active_) return;
    reading_ = false;
    if (!ok || buf.empty()) {
      fail("cannot read the spooled message", kScanErrorInternal);
      return;
    }
    read_off_ += buf.size();
    if (skip_body_) {  // the milter has seen enough
      readBody();
      return;
    }
    std::string b;
    milterBody(buf, &b);
    push(std::move(b), milter_proto::kNoBody, milter_proto::kNrBody);
    pump();
  }

  // The milter's verdict at the end of the message.
  void endOfBody(Verdict v) {
    const bool quarantine = !quarantine_.empty();
    in_message_ = false;
    if (isTerminal(v.action)) {
      outcome_ = "rejected";
      finish(std::move(v));
      return;
    }
    if (quarantine) {
      outcome_ = "quarantined";
      bump(milterStats().quarantined);
      if (o_->quarantine_store) {
        finish(Verdict::of(Action::kQuarantine, "milter " + o_->name + ": quarantine: " + quarantine_));
        return;
      }
      if (g_milter_log.allow())
        log::warn("milter quarantine without a store",
                  {{"session", session_id_}, {"scanner", o_->name}, {"reason", quarantine_}});
      finish(Verdict::of(
          Action::kTempfail,
          "milter " + o_->name + ": quarantine asked, no hooks.quarantine store: " + quarantine_));
      return;
    }
    if (discard_) {
      outcome_ = "discarded";
      finish(discardVerdict());
      return;
    }
    if (!modified_) {
      finish(Verdict::next());
      return;
    }
    // Write the rewritten message off the reactor.
    phase_ = DataPhase::kWriting;
    outcome_ = "modified";
    bump(milterStats().modified);
    auto headers = std::make_shared<std::vector<MilterHeader>>(std::move(headers_));
    std::shared_ptr<std::string> nb;
    if (new_body_) nb = std::make_shared<std::string>(std::move(*new_body_));
    new_body_.reset();
    const bool lead = protocol_ & milter_proto::kHeaderLeadingSpace;
    const uint64_t gen = gen_;
    auto post = post_;
    auto body = body_;
    const uint64_t body_off = body_off_;
    const std::string dir = o_->spool_dir;
    MilterFilter* self = this;
    const bool queued = content_->submit(
        [post, body, body_off, headers, nb, lead, dir, gen, self] {
          std::string err;
          auto out = writeMessage(dir, *headers, lead, body, body_off, nb.get(), &err);
          (*post)([self, gen, out, err] { self->onWritten(gen, out, err); });
        },
        o_->scan_timeout);
    if (!queued) fail("content executor queue full", kScanErrorInternal);
  }

  void onWritten(uint64_t gen, std::shared_ptr<const MessageBody> out, const std::string& err) {
    if (gen != gen_ || !active_) return;
    if (!out) {
      fail("cannot write the modified message: " + err, kScanErrorInternal);
      return;
    }
    Verdict v = Verdict::next();
    v.reason = "milter " + o_->name + ": message modified";
    v.replacement = std::move(out);
    finish(std::move(v));
  }

  Verdict discardVerdict() {
    bump(milterStats().discards);
    // Accepted and dropped: the session answers 250 and delivers nothing (filters/verdict.h).
    Verdict v = Verdict::of(Action::kReply, "milter " + o_->name + ": discard");
    v.code = 250;
    v.enhanced = "2.0.0";
    return v;
  }

  // The data stage when the milter is done with the message before its content (the
  // next MAIL is preceded by ABORT).
  Verdict endOfMessage(SessionFacts& facts) {
    recordScanResult(facts, o_->name, discard_ ? "discarded" : kScanClean);
    if (discard_) return discardVerdict();
    return Verdict::next();
  }

  // A message over max_size: not sent to the milter (it gets ABORT before the next MAIL).
  Verdict oversize(SessionFacts& facts) {
    const std::string reason = "milter " + o_->name + ": message over max_size, not sent";
    recordScanResult(facts, o_->name, kScanUnscannedOversize);
    switch (o_->on_oversize) {
      case OversizeAction::kAcceptUnscanned: {
        if (discard_) return discardVerdict();
        Verdict v = Verdict::next();  // marked by the scan header (NAME=unscanned(oversize))
        v.reason = reason;
        return v;
      }
      case OversizeAction::kTempfail:
        return Verdict::of(Action::kTempfail, reason);
      case OversizeAction::kReject: {
        Verdict v = Verdict::of(Action::kReject, reason);
        v.code = 554;
        v.enhanced = "5.3.4";
        v.text = "Message too large to be scanned";
        return v;
      }
    }
    return Verdict::of(Action::kTempfail, reason);
  }

  // --- replies ---
  // False when the reply ended the exchange in a way that stops reading (a failure).
  bool onReply(const MilterReply& r) {
    if (!awaiting_ && r.kind != MilterReplyKind::kProgress) {
      fail(std::string("unexpected reply '") + (r.command > 32 && r.command < 127 ? r.command : '?') + "'");
      return false;
    }
    if (!negotiated_) {
      if (r.kind != MilterReplyKind::kOptneg) {
        fail("no option negotiation reply");
        return false;
      }
      if (r.version < 2 || r.version > kMilterVersion) {
        fail("milter protocol version " + std::to_string(r.version) + " not supported");
        return false;
      }
      // Actions asked for and not offered (rspamd asks for recipient changes) are not
      // granted, as Postfix does; the milter learns it from its own request being cut.
      negotiated_ = true;
      sent_.clear();
      actions_ = r.actions & kMilterOfferedActions;
      protocol_ = r.protocol & kMilterOfferedProtocol;
      bump(milterStats().sessions);
      awaiting_ = false;
      pump();
      return !failed_;
    }
    switch (r.kind) {
      case MilterReplyKind::kProgress:
        return true;
      case MilterReplyKind::kSetSymList:
        return true;  // the gateway sends its fixed set of macros at every stage
      case MilterReplyKind::kAddHeader:
      case MilterReplyKind::kChangeHeader:
      case MilterReplyKind::kInsertHeader:
      case MilterReplyKind::kReplaceBody:
      case MilterReplyKind::kQuarantine:
        if (!eob_sent_ || phase_ != DataPhase::kEob) {
          fail("a message change before the end of the body");
          return false;
        }
        return modification(r);
      case MilterReplyKind::kOther:
        if (phase_ == DataPhase::kEob && eob_sent_ &&
            std::string_view("+-2e").find(r.command) != std::string_view::npos) {
          // Recipient and sender changes are not offered: ignored (and said so).
          if (g_milter_log.allow())
            log::warn(
                "milter change ignored",
                {{"session", session_id_}, {"scanner", o_->name}, {"reply", std::string(1, r.command)}});
          return true;
        }
        fail(std::string("unexpected reply '") + (r.command > 32 && r.command < 127 ? r.command : '?') + "'");
        return false;
      case MilterReplyKind::kOptneg:
        fail("unexpected reply 'O'");
        return false;
      case MilterReplyKind::kContinue:
        awaiting_ = false;
        if (stage_ == Stage::kData && phase_ == DataPhase::kEob && eob_sent_) {
          eob_sent_ = false;
          endOfBody(Verdict::next());
        } else {
          pump();
        }
        return !failed_;
      case MilterReplyKind::kSkip:
        awaiting_ = false;
        if (stage_ == Stage::kData && phase_ == DataPhase::kBody) {
          skip_body_ = true;
          // BODY requests still queued are dropped; the end of body follows.
          while (!queue_.empty()) queue_.pop_front();
          pump();
          return !failed_;
        }
        pump();
        return !failed_;
      case MilterReplyKind::kAccept:
        awaiting_ = false;
        queue_.clear();
        if (stage_ == Stage::kConnect || stage_ == Stage::kHelo) {
          done_session_ = true;
          finish(Verdict::next());
          return true;
        }
        done_message_ = true;
        if (stage_ == Stage::kData) {
          eob_sent_ = false;
          in_message_ = false;
          if (phase_ == DataPhase::kEob) {
            endOfBody(Verdict::next());  // changes already given still apply
            return true;
          }
          // Accepted before the end of the body: the rest is not sent (the milter expects ABORT or the next
          // MAIL).
          in_message_ = true;
          if (discard_) outcome_ = "discarded";
          finish(discard_ ? discardVerdict() : Verdict::next());
          return true;
        }
        finish(Verdict::next());
        return true;
      case MilterReplyKind::kDiscard:
        awaiting_ = false;
        queue_.clear();
        done_message_ = true;
        if (stage_ == Stage::kConnect || stage_ == Stage::kHelo) discard_session_ = true;
        discard_ = true;
        if (stage_ == Stage::kData) {
          in_message_ = phase_ != DataPhase::kEob;
          eob_sent_ = false;
          outcome_ = "discarded";
          finish(discardVerdict());
          return true;
        }
        finish(Verdict::next());
        return true;
      case MilterReplyKind::kReject:
      case MilterReplyKind::kTempfail:
      case MilterReplyKind::kReplyCode: {
        awaiting_ = false;
        queue_.clear();
        bump(milterStats().refusals);
        Verdict v = refusal(r);
        if (stage_ == Stage::kData) {
          in_message_ = phase_ != DataPhase::kEob;
          eob_sent_ = false;
          outcome_ = "rejected";
        }
        // Refused at MAIL: the transaction is over for the milter too.
        if (stage_ == Stage::kMail) in_message_ = false;
        finish(std::move(v));
        return true;
      }
    }
    return true;
  }

  Verdict refusal(const MilterReply& r) {
    const std::string who = "milter " + o_->name;
    if (r.kind == MilterReplyKind::kReject) return Verdict::of(Action::kReject, who + ": reject");
    if (r.kind == MilterReplyKind::kTempfail) return Verdict::of(Action::kTempfail, who + ": tempfail");
    // y: "550 5.7.1 text", possibly multi-line ("550-5.7.1 a\r\n550 5.7.1 b"): the first line.
    std::string line = r.text.substr(0, r.text.find_first_of("\r\n"));
    if (line.size() > 3 && line[3] == '-') line[3] = ' ';
    Verdict v;
    uint16_t code = 0;
    std::string enhanced, text;
    if (!parseReplyLine(line, &code, &enhanced, &text)) {
      // Not a 4xx/5xx reply: as Postfix, a malformed reply code is a tempfail.
      return Verdict::of(Action::kTempfail, who + ": malformed reply code");
    }
    v.action = Action::kReply;
    v.code = code;
    v.enhanced = enhanced;
    std::string clean;
    if (cleanReplyText(text, &clean, 200)) v.text = clean;
    v.reason = who + ": reply " + std::to_string(code);
    return v;
  }

  bool modification(const MilterReply& r) {
    using namespace milter_action;
    switch (r.kind) {
      case MilterReplyKind::kAddHeader:
      case MilterReplyKind::kInsertHeader: {
        if (!(actions_ & kAddHeaders)) return badMod("adds a header without having asked to");
        MilterHeader h;
        if (!validHeaderName(r.name) || !foldedValue(r.value, &h.value)) return badMod("an invalid header");
        if (headers_.size() >= kMaxHeaders) return badMod("too many headers");
        h.name = r.name;
        if (r.kind == MilterReplyKind::kAddHeader)
          headers_.push_back(std::move(h));
        else
          headers_.insert(headers_.begin() + std::min<size_t>(r.index, headers_.size()), std::move(h));
        modified_ = true;
        return true;
      }
      case MilterReplyKind::kChangeHeader: {
        if (!(actions_ & kChangeHeaders)) return badMod("changes a header without having asked to");
        std::string value;
        if (!validHeaderName(r.name) || !foldedValue(r.value, &value)) return badMod("an invalid header");
        // index: the n-th header of that name, from 1 (0 is taken as 1, as sendmail does).
        uint32_t want = std::max<uint32_t>(r.index, 1), seen = 0;
        for (auto it = headers_.begin(); it != headers_.end(); ++it) {
          if (!ieq(it->name, r.name) || ++seen != want) continue;
          if (value.empty()) {
            headers_.erase(it);
          } else {
            it->value = std::move(value);
            it->raw.clear();
          }
          modified_ = true;
          return true;
        }
        if (!value.empty()) {  // no such header: added (sendmail's and Postfix's behaviour)
          if (headers_.size() >= kMaxHeaders) return badMod("too many headers");
          headers_.push_back(MilterHeader{r.name, std::move(value), {}});
          modified_ = true;
        }
        return true;
      }
      case MilterReplyKind::kReplaceBody: {
        if (!(actions_ & kChangeBody)) return badMod("replaces the body without having asked to");
        if (!new_body_) {
          new_body_ = std::string();
          body_last_cr_ = false;
        }
        if (new_body_->size() + r.value.size() > o_->max_size) return badMod("a new body over max_size");
        appendCrlfBody(r.value, &body_last_cr_, &*new_body_);
        modified_ = true;
        return true;
      }
      case MilterReplyKind::kQuarantine: {
        if (!(actions_ & kQuarantine)) return badMod("quarantines without having asked to");
        std::string clean;
        cleanReplyText(r.text, &clean, 200);
        quarantine_ = clean.empty() ? std::string("(no reason)") : clean;
        return true;
      }
      case MilterReplyKind::kContinue:
      case MilterReplyKind::kAccept:
      case MilterReplyKind::kReject:
      case MilterReplyKind::kTempfail:
      case MilterReplyKind::kDiscard:
      case MilterReplyKind::kReplyCode:
      case MilterReplyKind::kSkip:
      case MilterReplyKind::kProgress:
      case MilterReplyKind::kOptneg:
      case MilterReplyKind::kSetSymList:
      case MilterReplyKind::kOther:
        return true;
    }
    return true;
  }

  bool badMod(const char* what) {
    fail(std::string("protocol error: the milter ") + what);
    return false;
  }

  // --- the end of a stage ---
  Verdict failNow(SessionFacts& facts, std::string reason, std::string_view outcome = kScanErrorInternal) {
    broken(reason, true, outcome);
    if (stage_ == Stage::kData) recordScanResult(facts, o_->name, outcome);
    return failureVerdict(o_->on_error, "milter " + o_->name + ": " + reason);
  }

  // The milter failed: closed for the rest of the session; the pending stage gets on_error.
  void fail(std::string reason, std::string_view outcome = kScanErrorScanner) {
    const bool was_active = active_;
    const bool inline_answer = in_pump_;
    const Resumer resume = resume_;
    broken(reason, true, outcome);
    if (!was_active) return;
    Verdict v = failureVerdict(o_->on_error, "milter " + o_->name + ": " + reason);
    answerWith(std::move(v), std::string(outcome), inline_answer, resume);
  }

  // The stage's answer: returned by onStage (inline) or through the Resumer; at the
  // data stage the outcome goes into the scan results.
  void answerWith(Verdict v, std::string outcome, bool inline_answer, const Resumer& resume) {
    if (stage_ != Stage::kData) outcome.clear();
    if (inline_answer) {
      answer_ = std::move(v);
      answer_outcome_ = std::move(outcome);
      return;
    }
    resume([v = std::move(v), o = o_, outcome = std::move(outcome)](SessionFacts& facts) {
      if (!outcome.empty()) recordScanResult(facts, o->name, outcome);
      return v;
    });
  }

  // --- circuit breaker: every stage admitted reports once (success, failure or abandoned).
  void reportSuccess() const {
    if (!ticket_) return;
    const CircuitBreaker::Ticket t = *ticket_;
    ticket_.reset();
    if (o_->breaker->success(t))
      log::info("scanner circuit breaker closed: the trial scan succeeded", {{"scanner", o_->name}});
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

  std::string_view onErrorName() const {
    switch (o_->on_error) {
      case FailureAction::kAccept:
        return "accept";
      case FailureAction::kTempfail:
        return "tempfail";
      case FailureAction::kReject:
        return "reject";
    }
    return "tempfail";
  }

  void broken(const std::string& reason, bool report = true, std::string_view outcome = kScanErrorScanner) {
    if (failed_) return;
    fail_outcome_ = std::string(outcome);
    if (report) {
      reportFailure();
      bump(milterStats().errors);
      if (g_milter_log.allow())
        log::warn("milter failed", {{"session", session_id_},
                                    {"scanner", o_->name},
                                    {"stage", stageName(stage_)},
                                    {"error", reason},
                                    {"on_error", onErrorName()}});
    }
    failed_ = true;
    fail_reason_ = reason;
    stop();
    if (conn_ != 0 && conns_) conns_->close(conn_);
    conn_ = 0;
  }

  // The milter answered the stage (outcome_: what it made of the message at data).
  void finish(Verdict v) {
    if (!active_) return;
    reportSuccess();
    const Resumer resume = resume_;
    const bool inline_answer = in_pump_;
    stop();
    answerWith(std::move(v), outcome_, inline_answer, resume);
  }

  void stop() {
    gen_++;
    active_ = false;
    reading_ = false;
    drain_wait_ = false;
    phase_ = DataPhase::kNone;
    resume_ = Resumer();
    body_.reset();
  }

  std::string hostname() const {
    if (!o_->hostname.empty()) return o_->hostname;
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
    return buf;
  }

  std::shared_ptr<const MilterOptions> o_;
  core::Executor* content_;
  ConnectionHost* conns_;
  std::shared_ptr<const std::function<void(std::function<void()>)>> post_;
  std::string session_id_;
  std::string queue_id_;
  Stage stage_ = Stage::kConnect;
  Resumer resume_;
  Verdict answer_;
  ConnectionId conn_ = 0;
  size_t endpoint_ = 0;
  std::string last_error_;
  bool connected_ = false;
  bool negotiated_ = false;
  uint32_t actions_ = 0, protocol_ = 0;
  MilterReplyParser parser_;
  std::deque<Request> queue_;
  std::vector<Request> sent_;
  bool awaiting_ = false;
  bool drain_wait_ = false;
  bool active_ = false;
  bool in_pump_ = false;
  bool failed_ = false;
  std::string fail_reason_;
  std::string fail_outcome_;    // the scan result of every data stage after a failure
  std::string outcome_;         // the data stage's scan result so far
  std::string answer_outcome_;  // with answer_
  mutable std::optional<CircuitBreaker::Ticket> ticket_;  // a stage admitted, not reported yet
  bool done_session_ = false;
  bool done_message_ = false;
  bool in_message_ = false;
  bool discard_ = false;
  bool discard_session_ = false;
  // data stage
  DataPhase phase_ = DataPhase::kNone;
  uint64_t gen_ = 0;
  std::shared_ptr<const MessageBody> body_;
  std::string head_;
  std::vector<MilterHeader> headers_;
  uint64_t body_off_ = 0;
  uint64_t read_off_ = 0;
  bool reading_ = false;
  bool skip_body_ = false;
  bool eob_sent_ = false;
  bool modified_ = false;
  std::optional<std::string> new_body_;
  bool body_last_cr_ = false;
  std::string quarantine_;
};

}  // namespace

bool milterHeaderBlock(std::string_view head, bool whole, bool keep_space, std::vector<MilterHeader>* out,
                       uint64_t* body_offset) {
  out->clear();
  size_t pos = 0;
  while (true) {
    const size_t eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) {
      if (!whole) return false;
      // The message ends without a line end: what is left is body.
      *body_offset = pos;
      return true;
    }
    const std::string_view line = head.substr(pos, eol - pos);
    if (line.empty()) {
      *body_offset = eol + 2;
      return true;
    }
    if ((line[0] == ' ' || line[0] == '\t') && !out->empty()) {
      MilterHeader& h = out->back();
      h.value += '\n';
      h.value.append(line);
      h.raw.append(head.substr(pos, eol + 2 - pos));
      pos = eol + 2;
      continue;
    }
    const size_t colon = line.find(':');
    std::string_view name = colon == std::string_view::npos ? std::string_view() : line.substr(0, colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
    if (name.empty() || !validHeaderName(name)) {
      *body_offset = pos;  // not a header: the body starts here
      return true;
    }
    MilterHeader h;
    h.name.assign(name);
    std::string_view value = line.substr(colon + 1);
    if (!keep_space && !value.empty() && value[0] == ' ') value.remove_prefix(1);
    h.value.assign(value);
    h.raw.assign(head.substr(pos, eol + 2 - pos));
    out->push_back(std::move(h));
    pos = eol + 2;
  }
}

MilterFactory::MilterFactory(MilterOptions options)
    : options_(std::make_shared<const MilterOptions>(std::move(options))) {}

std::unique_ptr<Filter> MilterFactory::create(const SessionFacts& facts,
                                              const FilterServices& services) const {
  if (facts.protocol != "smtp") return nullptr;
  if (!options_->when.empty()) {
    const bool any = std::any_of(options_->when.begin(), options_->when.end(), [&](const ScanWhen& w) {
      return w.listeners.empty() ||
             std::find(w.listeners.begin(), w.listeners.end(), facts.listener) != w.listeners.end();
    });
    if (!any) return nullptr;
  }
  return std::make_unique<MilterFilter>(options_, services);
}

}  // namespace mailgate::filters
