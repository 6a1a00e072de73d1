#include "gateway/session/replacement_body.h"

namespace mailgate::session {

DeliverableBody::Fetch ReplacementBody::fetch(uint64_t off, size_t n, std::string* out,
                                              std::function<void()> ready) {
  if (!error_.empty()) return Fetch::kError;
  if (!io_.submit) {
    if (body_->read(off, n, out) && out->size() == n) return Fetch::kDone;
    error_ = "cannot read the replaced message";
    return Fetch::kError;
  }
  if (held_ && held_off_ == off && held_n_ == n) {
    held_ = false;
    if (!held_ok_) return Fetch::kError;
    out->swap(held_data_);
    std::string().swap(held_data_);
    return Fetch::kDone;
  }
  held_ = false;
  ready_ = std::move(ready);
  if (inflight_) return Fetch::kPending;  // another range: asked again when that one is in
  inflight_ = true;
  held_off_ = off;
  held_n_ = n;
  std::weak_ptr<ReplacementBody> self = weak_from_this();
  auto body = body_;
  auto post = io_.post;
  const bool queued = io_.submit([body, off, n, post, self] {
    std::string data;
    const bool ok = body->read(off, n, &data) && data.size() == n;
    post([self, off, n, ok, data = std::move(data)]() mutable {
      if (auto s = self.lock()) s->readDone(off, n, ok, std::move(data));
    });
  });
  if (!queued) {
    inflight_ = false;
    error_ = "spool thread queue full";
    return Fetch::kError;
  }
  return Fetch::kPending;
}

void ReplacementBody::readDone(uint64_t off, size_t n, bool ok, std::string data) {
  inflight_ = false;
  held_ = true;
  held_ok_ = ok;
  held_off_ = off;
  held_n_ = n;
  held_data_ = std::move(data);
  if (!ok) error_ = "cannot read the replaced message";
  if (ready_) {
    auto ready = ready_;  // may fetch again, which replaces ready_
    ready();
  }
}

}  // namespace mailgate::session
