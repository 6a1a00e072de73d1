#include "gateway/session/quarantine_release.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "gateway/core/ascii.h"
#include "gateway/core/hostname.h"
#include "gateway/core/log.h"
#include "gateway/session/runtime.h"
#include "gateway/session/session.h"
#include "gateway/session/node_delivery.h"
#include "gateway/session/smtp_node_client.h"

namespace mailgate::session {

ReleaseOutcome releaseQuarantined(const Runtime& rt, const std::string& id) {
  ReleaseOutcome out;
  filters::QuarantineStore& store = *rt.quarantine;
  switch (store.claim(id)) {
    case filters::QuarantineStore::Claim::kNotFound:
      out.status = ReleaseOutcome::Status::kNotFound;
      return out;
    case filters::QuarantineStore::Claim::kBusy:
      out.status = ReleaseOutcome::Status::kBusy;
      return out;
    case filters::QuarantineStore::Claim::kError:
      out.status = ReleaseOutcome::Status::kError;
      out.error = "the quarantine store did not answer";
      return out;
    case filters::QuarantineStore::Claim::kClaimed:
      break;
  }
  struct Unclaim {
    filters::QuarantineStore& s;
    const std::string& id;
    ~Unclaim() { s.unclaim(id); }
  } unclaim{store, id};

  std::shared_ptr<const filters::MessageBody> body;
  auto got = store.get(id, &body);
  if (!got) {
    out.status =
        got.error() == "not found" ? ReleaseOutcome::Status::kNotFound : ReleaseOutcome::Status::kError;
    out.error = got.error();
    return out;
  }
  const filters::QuarantineEntry& e = got.value();
  const conf::ListenerConfig* listener = rt.listener(e.listener);
  const bool submission = listener && listener->protocol == conf::Protocol::kSubmission;

  std::vector<std::string> open;
  for (const auto& rcpt : e.rcpts)
    if (std::find(e.delivered.begin(), e.delivered.end(), rcpt) == e.delivered.end()) open.push_back(rcpt);
  RoutedRecipients routed = routeRecipients(rt, open, submission, false);
  for (auto& u : routed.unrouted_temporary) out.failed.emplace_back(u.first, "recipient lookup failed");
  for (auto& u : routed.unrouted) out.failed.emplace_back(u.first, "no longer a local mailbox");
  auto& groups = routed.groups;
  const NodeEnvelope env{e.mail_from, e.smtputf8, e.body_8bit, core::hostName()};

  std::vector<std::string> delivered = e.delivered;
  for (auto& [key, g] : groups) {
    if (g.targets.empty()) {
      for (const auto& r : g.rcpts) out.failed.emplace_back(r, "no storage node available");
      continue;
    }
    std::string last_error;
    bool done = false;
    for (const DeliveryTarget& t : g.targets) {
      NodeAttempt a = deliverToNode(t, env, g.rcpts, *body);
      for (auto& r : a.accepted) {
        delivered.push_back(r);
        out.delivered.push_back(std::move(r));
      }
      for (auto& f : a.refused) out.failed.push_back(std::move(f));
      if (a.error.empty() || a.sent_data) {
        if (!a.error.empty())
          for (const auto& r : g.rcpts) {
            const bool known = std::find(delivered.begin(), delivered.end(), r) != delivered.end() ||
                               std::any_of(out.failed.begin(), out.failed.end(),
                                           [&](const auto& f) { return f.first == r; });
            if (!known) out.failed.emplace_back(r, t.backend->name + ": " + a.error);
          }
        done = true;
        break;
      }
      last_error = t.backend->name + ": " + a.error;
      log::warn("quarantine release: node attempt failed",
                {{"id", id}, {"node", t.backend->name}, {"error", a.error}});
    }
    if (!done)
      for (const auto& r : g.rcpts) out.failed.emplace_back(r, last_error);
  }

  if (out.failed.empty()) {
    if (auto rm = store.remove(id); !rm) {
      // Delivered, but the entry stays: record it so that a later release skips them.
      (void)store.setDelivered(id, delivered);
      out.status = ReleaseOutcome::Status::kError;
      out.error = "delivered, but the entry was not removed: " + rm.error();
      return out;
    }
    filters::quarantineStats().released.fetch_add(1);
    out.status = ReleaseOutcome::Status::kReleased;
    log::info("quarantine released", {{"id", id}, {"recipients", out.delivered.size()}});
    return out;
  }
  if (!out.delivered.empty()) {
    if (auto ok = store.setDelivered(id, delivered); !ok)
      log::error(
          "quarantine release: the delivered recipients were not recorded: a later release delivers to them "
          "again",
          {{"id", id}, {"error", ok.error()}});
  }
  out.status = ReleaseOutcome::Status::kPartial;
  log::warn("quarantine release incomplete: the entry is kept",
            {{"id", id},
             {"delivered", out.delivered.size()},
             {"failed", out.failed.size()},
             {"first_failure", out.failed.front().first + ": " + out.failed.front().second}});
  return out;
}

// --- QuarantineSweeper --------------------------------------------------------------

QuarantineSweeper::QuarantineSweeper(std::shared_ptr<filters::QuarantineStore> store,
                                     std::chrono::milliseconds retention)
    : store_(std::move(store)), retention_(retention) {}

QuarantineSweeper::~QuarantineSweeper() { stop(); }

void QuarantineSweeper::start() {
  std::lock_guard<std::mutex> g(mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { run(); });
}

void QuarantineSweeper::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void QuarantineSweeper::sweepOnce() {
  auto n = store_->expire(filters::wallMs() - retention_.count());
  if (!n)
    log::warn("quarantine retention sweep failed", {{"store", store_->kind()}, {"error", n.error()}});
  else if (n.value())
    log::info("quarantine entries expired", {{"store", store_->kind()}, {"entries", n.value()}});
}

void QuarantineSweeper::run() {
  const auto interval = std::clamp<std::chrono::milliseconds>(retention_ / 2, std::chrono::milliseconds(1000),
                                                              std::chrono::milliseconds(60000));
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    lk.unlock();
    sweepOnce();
    lk.lock();
    cv_.wait_for(lk, interval, [this] { return stop_; });
  }
}

}  // namespace mailgate::session
