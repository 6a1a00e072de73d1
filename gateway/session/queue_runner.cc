#include "gateway/session/queue_runner.h"

#include <algorithm>
#include <utility>

#include "gateway/core/log.h"
#include "gateway/queue/dsn.h"
#include "gateway/session/node_delivery.h"
#include "gateway/session/runtime.h"
#include "gateway/core/wall_clock.h"

namespace mailgate::session {

namespace {
// Entries claimed per store call: small, so that the last of a batch is still well
// inside its lease when its turn comes (each delivery may wait for a slow node).
constexpr size_t kClaimBatch = 8;
// Batches per pass at most: a pass ends, and the summary is read again, this often.
constexpr size_t kMaxBatches = 64;
// An entry whose lease ends sooner than this is not started (it is claimed again).
constexpr int64_t kLeaseMarginMs = 5000;

log::RateLimit store_log(2);

using core::wallMs;

// The message's header section, up to (not including) the empty line, at most
// kDsnMaxHead octets; what could be read when the body cannot be read whole.
std::string headerSection(const filters::MessageBody& body) {
  std::string head, chunk;
  const uint64_t limit = std::min<uint64_t>(body.size(), queue::kDsnMaxHead + 4);
  while (head.size() < limit) {
    if (!body.read(head.size(), static_cast<size_t>(std::min<uint64_t>(16384, limit - head.size())),
                   &chunk) ||
        chunk.empty())
      break;
    head += chunk;
    if (head.find("\n\r\n") != std::string::npos || head.find("\n\n") != std::string::npos) break;
  }
  if (head.rfind("\r\n", 0) == 0 || head.rfind("\n", 0) == 0) return std::string();  // no header at all
  size_t end = head.find("\n\r\n");
  const size_t lf = head.find("\n\n");
  if (lf != std::string::npos && (end == std::string::npos || lf < end)) end = lf;
  if (end != std::string::npos) head.resize(end + 1);
  if (head.size() > queue::kDsnMaxHead) {
    head.resize(queue::kDsnMaxHead);
    const size_t last = head.rfind('\n');  // whole lines only
    head.resize(last == std::string::npos ? 0 : last + 1);
  }
  return head;
}

bool permanent(const std::string& reply) { return !reply.empty() && reply[0] == '5'; }

// The reply as one printable line (a node's text, an error), for the store and logs.
std::string oneLine(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  if (s.size() > 512) s.resize(512);
  return s;
}
}  // namespace

QueueRunner::QueueRunner(std::shared_ptr<queue::QueueStore> store, conf::QueueConfig cfg,
                         std::function<std::shared_ptr<const Runtime>()> runtime, std::string owner)
    : store_(std::move(store)),
      cfg_(std::move(cfg)),
      runtime_(std::move(runtime)),
      owner_(std::move(owner)) {}

QueueRunner::~QueueRunner() = default;  // the thread holds the runner: it has ended

void QueueRunner::start() {
  std::lock_guard<std::mutex> g(mu_);
  if (started_) return;
  started_ = true;
  stop_ = false;
  running_ = true;
  std::thread t([self = shared_from_this()] {
    self->run();
    std::lock_guard<std::mutex> lk(self->mu_);
    self->running_ = false;
    self->cv_.notify_all();
  });
  thread_id_ = t.get_id();
  t.detach();
}

void QueueRunner::requestStop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

bool QueueRunner::stop(std::chrono::milliseconds wait) {
  requestStop();
  std::unique_lock<std::mutex> lk(mu_);
  if (std::this_thread::get_id() == thread_id_) return false;
  return cv_.wait_for(lk, wait, [this] { return !running_; });
}

bool QueueRunner::stopping() {
  std::lock_guard<std::mutex> g(mu_);
  return stop_;
}

void QueueRunner::wake() {
  {
    std::lock_guard<std::mutex> g(mu_);
    woken_ = true;
  }
  cv_.notify_all();
}

void QueueRunner::run() {
  const auto interval = std::max(cfg_.scan_interval, std::chrono::milliseconds(10));
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    woken_ = false;
    lk.unlock();
    (void)runOnce();
    lk.lock();
    cv_.wait_for(lk, interval, [this] { return stop_ || woken_; });
  }
}

int64_t QueueRunner::backoffMs(uint32_t attempts) const {
  const int64_t cap = std::max<int64_t>(1, cfg_.max_retry.count());
  int64_t d = std::max<int64_t>(1, cfg_.retry.count());
  for (uint32_t i = 1; i < attempts && d < cap; ++i) d *= 2;
  return std::min(d, cap);
}

size_t QueueRunner::runOnce() {
  queue::QueueStats& st = queue::queueStats();
  if (auto s = store_->summary()) {
    st.entries.store(s.value().entries, std::memory_order_relaxed);
    st.bytes.store(s.value().bytes, std::memory_order_relaxed);
    st.oldest_created_ms.store(s.value().oldest_created_ms, std::memory_order_relaxed);
  } else if (store_log.allow()) {
    log::warn("queue store failed", {{"store", store_->kind()},
                                     {"op", "summary"},
                                     {"error", s.error()},
                                     {"suppressed", store_log.suppressed()}});
  }
  const std::shared_ptr<const Runtime> rt = runtime_ ? runtime_() : nullptr;
  if (!rt) return 0;
  const int64_t margin = std::min<int64_t>(kLeaseMarginMs, cfg_.lease.count() / 4);
  size_t worked = 0;
  for (size_t batch = 0; batch < kMaxBatches; ++batch) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (stop_) break;
    }
    auto claimed = store_->claimDue(owner_, wallMs(), cfg_.lease.count(), kClaimBatch);
    if (!claimed) {
      if (store_log.allow())
        log::warn("queue store failed", {{"store", store_->kind()},
                                         {"op", "claim"},
                                         {"error", claimed.error()},
                                         {"suppressed", store_log.suppressed()}});
      break;
    }
    const size_t n = claimed.value().size();
    bool more = false;
    for (auto& e : claimed.value()) {
      // The batch's last entries wait for the first ones: one whose lease is about
      // to end is left for the next claim rather than worked without a lease. A
      // stopping runner leaves the rest to the lease (or another gateway).
      if (stopping()) break;
      if (e.lease_until_ms && e.lease_until_ms - margin < wallMs()) continue;
      more = work(std::move(e), *rt) || more;
      ++worked;
    }
    if (n < kClaimBatch && !more) break;
  }
  return worked;
}

bool QueueRunner::work(queue::QueueEntry e, const Runtime& rt) {
  queue::QueueStats& st = queue::queueStats();
  const uint32_t attempt = e.attempts + 1;
  auto storeFailed = [&](const char* op, const std::string& error) {
    if (store_log.allow())
      log::warn("queue store failed", {{"store", store_->kind()},
                                       {"op", op},
                                       {"queue_id", e.id},
                                       {"error", error},
                                       {"suppressed", store_log.suppressed()}});
  };

  std::vector<std::string> open;
  for (const auto& r : e.rcpts)
    if (r.state == queue::RcptState::kPending) open.push_back(r.addr);
  auto rcptOf = [&e](const std::string& addr) -> queue::QueueRcpt* {
    for (auto& r : e.rcpts)
      if (r.addr == addr && r.state == queue::RcptState::kPending) return &r;
    return nullptr;
  };

  size_t delivered = 0, deferred = 0, failed = 0;
  std::string first_reply, backends;
  std::shared_ptr<const filters::MessageBody> body;
  bool lost = false;  // the lease was lost or the store failed mid-way: stop here

  auto settle = [&](const std::string& addr, queue::RcptState state, const std::string& reply,
                    const std::string& node) {
    queue::QueueRcpt* r = rcptOf(addr);
    if (!r) return;
    r->state = state;
    r->reply = oneLine(reply);
    r->updated_ms = wallMs();
    switch (state) {
      case queue::RcptState::kDelivered:
        ++delivered;
        st.delivered.fetch_add(1, std::memory_order_relaxed);
        if (e.dsn) st.dsn_delivered.fetch_add(1, std::memory_order_relaxed);
        log::info("queue delivered", {{"queue_id", e.id},
                                      {"to", addr},
                                      {"backend", node},
                                      {"attempts", attempt},
                                      {"delay", (r->updated_ms - e.created_ms) / 1000}});
        break;
      case queue::RcptState::kPending:
        ++deferred;
        if (first_reply.empty()) first_reply = r->reply;
        break;
      case queue::RcptState::kFailed:
        ++failed;
        st.failed.fetch_add(1, std::memory_order_relaxed);
        if (first_reply.empty()) first_reply = r->reply;
        log::warn("queue failed", {{"queue_id", e.id}, {"to", addr}, {"reply", r->reply}});
        break;
      case queue::RcptState::kReported:
        break;
    }
  };

  if (!open.empty()) {
    auto b = store_->body(e.id);
    if (!b) {
      storeFailed("body", b.error());
      for (const auto& a : open)
        settle(a, queue::RcptState::kPending, "451 4.3.0 the queued message cannot be read", "");
    } else {
      body = b.value();
    }
  }
  if (body) {
    const conf::ListenerConfig* listener = e.listener.empty() ? nullptr : rt.listener(e.listener);
    const bool relay = listener && listener->protocol == conf::Protocol::kSubmission;
    RoutedRecipients routed = routeRecipients(rt, open, relay, e.dsn);
    for (const auto& [rcpt, why] : routed.unrouted_temporary)
      settle(rcpt, queue::RcptState::kPending, why, "");
    for (const auto& [rcpt, why] : routed.unrouted) settle(rcpt, queue::RcptState::kFailed, why, "");
    NodeEnvelope env{e.mail_from == "<>" ? std::string() : e.mail_from, e.smtputf8, e.body_8bit, rt.hostname};
    for (auto& [key, g] : routed.groups) {
      if (lost) break;
      if (stopping()) {  // the rest waits for the next attempt (this gateway's or another's)
        for (const auto& r : g.rcpts) settle(r, queue::RcptState::kPending, "451 4.3.2 gateway stopping", "");
        continue;
      }
      if (g.targets.empty()) {
        for (const auto& r : g.rcpts)
          settle(r, queue::RcptState::kPending, "451 4.4.1 no storage node available", "");
        continue;
      }
      std::string last_error;
      bool done = false;
      size_t accepted = 0;
      // Failover order, as the release does: the next node only when this one failed
      // before the end of data (after it, the node may have taken the message).
      for (const DeliveryTarget& t : g.targets) {
        const std::string node = t.backend ? t.backend->name : key;
        backends += (backends.empty() ? "" : ",") + node;
        // The lease covers the attempt: renewed before it, and the attempt ends (its
        // waits cut short) before the lease does, so no other gateway takes the entry
        // while this one may still deliver.
        const int64_t lease = cfg_.lease.count();
        auto renewed = store_->renew(e.id, owner_, wallMs(), wallMs() + lease);
        if (!renewed || !renewed.value()) {
          log::warn("queue: the lease could not be renewed; the entry is left to the next attempt",
                    {{"queue_id", e.id}, {"error", renewed ? std::string("lost") : renewed.error()}});
          lost = true;
          break;
        }
        env.deadline = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(lease - std::min<int64_t>(kLeaseMarginMs, lease / 4));
        st.attempts.fetch_add(1, std::memory_order_relaxed);
        NodeAttempt a = deliverToNode(t, env, g.rcpts, *body);
        if (!a.error.empty() && !a.sent_data) {
          last_error = node + ": " + a.error;
          log::warn("queue node attempt failed", {{"queue_id", e.id}, {"backend", node}, {"error", a.error}});
          continue;
        }
        for (const auto& r : a.accepted)
          settle(r, queue::RcptState::kDelivered, "250 delivered to " + node, node);
        accepted += a.accepted.size();
        for (const auto& [r, reply] : a.refused)
          settle(r, permanent(reply) ? queue::RcptState::kFailed : queue::RcptState::kPending, reply, node);
        // Lost after the end of data: no other node; the rest stays pending.
        if (!a.error.empty())
          for (const auto& r : g.rcpts)
            if (std::find(a.accepted.begin(), a.accepted.end(), r) == a.accepted.end() &&
                std::none_of(a.refused.begin(), a.refused.end(), [&](const auto& f) { return f.first == r; }))
              settle(r, queue::RcptState::kPending, "451 4.4.2 " + node + ": " + a.error, node);
        done = true;
        break;
      }
      if (!done)
        for (const auto& r : g.rcpts) settle(r, queue::RcptState::kPending, "451 4.4.1 " + last_error, "");
      // A recipient a node took is recorded before anything else happens.
      if (accepted) {
        // Retried a few times: a recipient delivered and not recorded would be
        // delivered again by the next attempt.
        auto u = store_->update(e, owner_, false);
        for (int i = 0; i < 4 && !u; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(250 << i));
          u = store_->update(e, owner_, false);
        }
        if (!u) {
          log::error("queue: delivered recipients not recorded: they may be delivered again",
                     {{"queue_id", e.id}, {"error", u.error()}});
          lost = true;
        } else if (!u.value()) {
          log::warn("queue: the lease was lost; another gateway continues", {{"queue_id", e.id}});
          lost = true;
        }
      }
    }
  }
  if (!open.empty())
    log::info("queue attempt", {{"queue_id", e.id},
                                {"attempt", attempt},
                                {"backend", backends},
                                {"delivered", delivered},
                                {"deferred", deferred},
                                {"failed", failed},
                                {"reply", first_reply}});
  if (lost) return false;  // the lease runs out; the entry is claimed again

  // Past the lifetime: what is still pending fails as expired.
  const int64_t now = wallMs();
  const bool too_old = e.created_ms + cfg_.lifetime.count() < now;
  if (too_old) {
    for (auto& r : e.rcpts) {
      if (r.state != queue::RcptState::kPending) continue;
      r.state = queue::RcptState::kFailed;
      if (r.reply.empty()) r.reply = "451 4.4.7 not delivered within the queue lifetime";
      r.updated_ms = now;
      st.failed.fetch_add(1, std::memory_order_relaxed);
      st.expired.fetch_add(1, std::memory_order_relaxed);
      log::warn(
          "queue expired",
          {{"queue_id", e.id}, {"to", r.addr}, {"reply", r.reply}, {"age", (now - e.created_ms) / 1000}});
    }
  } else {
    st.deferred.fetch_add(e.count(queue::RcptState::kPending), std::memory_order_relaxed);
  }

  // The sender's DSN for the failed recipients; made durable before they are
  // marked reported (a failed put leaves them failed: the next pass tries again).
  bool queued_dsn = false;
  if (e.count(queue::RcptState::kFailed)) {
    if (queue::dsnDue(e)) {
      queue::DsnInput in;
      in.reporting_mta = rt.hostname;
      in.original = &e;
      in.now_ms = now;
      for (const auto& r : e.rcpts)
        if (r.state == queue::RcptState::kFailed)
          // Expired: failed without a permanent reply (only the lifetime fails them so).
          in.failed.push_back({r.addr, r.reply, too_old && !permanent(r.reply)});
      if (!body) {
        if (auto b = store_->body(e.id))
          body = b.value();
        else
          storeFailed("body", b.error());
      }
      if (body) in.original_headers = headerSection(*body);
      const queue::QueueEntry d = queue::dsnEntry(e, 1 + e.count(queue::RcptState::kReported), now);
      bool queued = false;
      // A DSN put whose record below was lost (the gateway died in between) is not
      // made twice.
      if (auto have = store_->get(d.id); have && have.value()) {
        queued = true;
      } else {
        std::string error;
        switch (store_->put(d, filters::StringBody(queue::buildDsn(in)), &error)) {
          case queue::QueueStore::Put::kStored:
            queued = queued_dsn = true;
            st.dsn_sent.fetch_add(1, std::memory_order_relaxed);
            log::info("queue dsn queued", {{"queue_id", e.id}, {"dsn_id", d.id}, {"to", e.mail_from}});
            break;
          case queue::QueueStore::Put::kFull:
            storeFailed("dsn", "the queue is full");
            break;
          case queue::QueueStore::Put::kError:
            storeFailed("dsn", error);
            break;
        }
      }
      if (queued)
        for (auto& r : e.rcpts)
          if (r.state == queue::RcptState::kFailed) r.state = queue::RcptState::kReported;
    } else {
      for (auto& r : e.rcpts)
        if (r.state == queue::RcptState::kFailed) r.state = queue::RcptState::kReported;
    }
  }

  if (e.finished()) {
    auto rm = store_->remove(e.id, owner_);
    if (!rm) storeFailed("remove", rm.error());
    return queued_dsn;
  }
  e.attempts = attempt;
  e.next_ms = now + backoffMs(attempt);
  auto u = store_->update(e, owner_, true);
  if (!u)
    storeFailed("update", u.error());
  else if (!u.value())
    log::warn("queue: the lease was lost; another gateway continues", {{"queue_id", e.id}});
  return queued_dsn;
}

}  // namespace mailgate::session
