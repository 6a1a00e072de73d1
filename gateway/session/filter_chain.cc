#include "gateway/session/filter_chain.h"

#include <chrono>
#include <random>

#include "gateway/core/log.h"
#include "gateway/session/scanner_stats.h"

namespace mailgate::session {

namespace {
log::RateLimit g_chain_log(20);

std::string newRef() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  static const char kHex[] = "0123456789abcdef";
  uint32_t v = rng();
  std::string r(6, '0');
  for (int i = 5; i >= 0; i--) {
    r[static_cast<size_t>(i)] = kHex[v & 15];
    v >>= 4;
  }
  return r;
}
}  // namespace

ChainStats& chainStats() {
  static ChainStats s;
  return s;
}

bool FilterChain::wants(filters::Stage stage) const {
  for (const auto& f : filters_)
    if (f->stages() & filters::stageBit(stage)) return true;
  return false;
}

filters::Verdict FilterChain::notify(const filters::Event& event, filters::SessionFacts& facts) {
  filters::Verdict result = filters::Verdict::next();
  for (auto& f : filters_) {
    filters::Verdict v = f->onEvent(event, facts);
    if (filters::isTerminal(v.action)) {
      v.filter = std::string(f->name());
      filters::Verdict clean = v;
      if (!v.text.empty() && !filters::cleanReplyText(v.text, &clean.text)) {
        chainStats().bad_text++;
        clean.text.clear();
      }
      clean.ref = newRef();
      chainStats().refusals++;
      return clean;
    }
    if (v.action == filters::Action::kDelay && v.delay > result.delay) {
      result = std::move(v);
      result.filter = std::string(f->name());
    }
  }
  return result;
}

bool FilterChain::run(filters::Stage stage, filters::SessionFacts& facts) {
  if (state_ != State::kIdle) {
    // A session runs one stage at a time; this is a bug in the caller.
    log::error("filter chain started while busy",
               {{"session", facts.session_id}, {"stage", filters::stageName(stage)}});
    filters::Verdict v = filters::Verdict::of(filters::Action::kTempfail, "internal: chain busy");
    v.ref = newRef();
    host_.chainDone(stage, std::move(v));
    return true;
  }
  stage_ = stage;
  facts_ = &facts;
  index_ = 0;
  if (stage == filters::Stage::kData) {
    headers_.clear();
    replacement_.reset();
  }
  state_ = State::kRunning;
  step();
  return state_ == State::kIdle;
}

void FilterChain::step() {
  while (state_ == State::kRunning) {
    if (index_ >= filters_.size()) {
      finish(filters::Verdict::next());
      return;
    }
    filters::Filter& f = *filters_[index_];
    if (!(f.stages() & filters::stageBit(stage_))) {
      index_++;
      continue;
    }
    if (!poster_) poster_ = host_.chainPoster();
    ++token_;
    step_started_ = host_.chainNow();
    filters::Verdict v = f.onStage(stage_, *facts_, filters::Resumer(poster_, token_));
    if (!apply(std::move(v))) return;
  }
}

void FilterChain::countScan() {
  const std::string_view name = filters_[index_]->name();
  for (const auto& [scanner, outcome] : facts_->scan_results) {
    if (scanner != name) continue;
    if (scanner_stats_.size() < filters_.size()) scanner_stats_.resize(filters_.size(), nullptr);
    ScannerStats*& st = scanner_stats_[index_];
    if (!st) st = scannerStats(name);
    const uint64_t now = host_.chainNow();
    st->record(classifyScanOutcome(outcome), now > step_started_ ? now - step_started_ : 0);
    return;
  }
}

bool FilterChain::apply(filters::Verdict v) {
  filters::Filter& f = *filters_[index_];
  if (stage_ == filters::Stage::kData && v.action != filters::Action::kPending) countScan();
  if (v.replacement && stage_ == filters::Stage::kData &&
      (v.action == filters::Action::kContinue || v.action == filters::Action::kAddHeader)) {
    facts_->message = v.replacement;  // what the later filters scan, and what the node gets
    replacement_ = std::move(v.replacement);
  }
  switch (v.action) {
    case filters::Action::kContinue:
      index_++;
      return true;
    case filters::Action::kAddHeader: {
      std::string h;
      if (stage_ == filters::Stage::kData && filters::cleanReplyText(v.header, &h, 998) &&
          h.find(':') != std::string::npos && h.find(':') > 0) {
        headers_.push_back(std::move(h));
      } else {
        chainStats().bad_text++;
        if (g_chain_log.allow())
          log::warn("filter header refused", {{"session", facts_->session_id}, {"filter", f.name()}});
      }
      index_++;
      return true;
    }
    case filters::Action::kPending:
      chainStats().pending++;
      state_ = State::kPending;
      wake_at_ = host_.chainNow() + static_cast<uint64_t>(f.deadline().count());
      if (!held_) {
        held_ = true;
        host_.chainHold();
      }
      host_.chainTimer(wake_at_);
      return false;
    case filters::Action::kDelay: {
      chainStats().delays++;
      index_++;
      if (v.delay.count() <= 0) return true;
      state_ = State::kDelay;
      wake_at_ = host_.chainNow() + static_cast<uint64_t>(v.delay.count());
      if (!held_) {
        held_ = true;
        host_.chainHold();
      }
      host_.chainTimer(wake_at_);
      return false;
    }
    case filters::Action::kReply:
    case filters::Action::kTempfail:
    case filters::Action::kReject:
    case filters::Action::kClose:
    case filters::Action::kQuarantine:
      if (v.filter.empty()) v.filter.assign(f.name());
      finish(std::move(v));
      return false;
  }
  return false;
}

void FilterChain::resume(uint64_t token, filters::Resumer::Answer answer) {
  if (state_ != State::kPending || token != token_) {
    chainStats().late_answers++;
    return;
  }
  state_ = State::kRunning;
  wake_at_ = 0;
  host_.chainTimer(0);
  filters::Verdict v = answer ? answer(*facts_) : filters_[index_]->onError();
  if (v.action == filters::Action::kPending) {
    // An answer must answer; treat it as the filter's failure.
    v = filters_[index_]->onError();
    v.reason = "internal: pending answer";
  }
  if (apply(std::move(v))) step();
}

void FilterChain::onTimer(uint64_t now_ms) {
  if (state_ == State::kDelay && now_ms >= wake_at_) {
    state_ = State::kRunning;
    wake_at_ = 0;
    host_.chainTimer(0);
    step();
    return;
  }
  if (state_ != State::kPending || now_ms < wake_at_) return;
  chainStats().timeouts++;
  filters::Filter& f = *filters_[index_];
  ++token_;  // the answer, if it still comes, is late
  f.cancel();
  filters::Verdict v = f.onError();
  if (v.reason.empty()) v.reason = "timeout";
  if (g_chain_log.allow())
    log::warn("filter deadline passed", {{"session", facts_->session_id},
                                         {"filter", f.name()},
                                         {"stage", filters::stageName(stage_)},
                                         {"action", filters::actionName(v.action)}});
  state_ = State::kRunning;
  wake_at_ = 0;
  host_.chainTimer(0);
  if (v.action == filters::Action::kPending) v = filters::Verdict::of(filters::Action::kTempfail, "timeout");
  if (apply(std::move(v))) step();
}

void FilterChain::cancel() {
  if (state_ == State::kPending) {
    chainStats().cancelled++;
    filters_[index_]->cancel();
  }
  ++token_;
  state_ = State::kIdle;
  wake_at_ = 0;
  held_ = false;
  facts_ = nullptr;
}

void FilterChain::finish(filters::Verdict v) {
  const filters::Stage stage = stage_;
  state_ = State::kIdle;
  wake_at_ = 0;
  facts_ = nullptr;
  host_.chainTimer(0);
  if (filters::isTerminal(v.action)) {
    if (v.action != filters::Action::kQuarantine) chainStats().refusals++;
    std::string clean;
    if (!v.text.empty() && !filters::cleanReplyText(v.text, &clean)) {
      chainStats().bad_text++;
      if (g_chain_log.allow()) log::warn("filter reply text refused", {{"filter", v.filter}});
    }
    v.text = std::move(clean);
    if (v.ref.empty()) v.ref = newRef();
  }
  held_ = false;  // chainDone() decides when the client is read again
  host_.chainDone(stage, std::move(v));
}

}  // namespace mailgate::session
