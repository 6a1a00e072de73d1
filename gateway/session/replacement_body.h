#pragma once
// A scanner's replacement for the spooled message (filters::Verdict::replacement), as
// a delivery streams it: its chunks are read on another thread (the reactor's spool
// thread) through filters::MessageBody and handed back on the owner's thread, so the
// reactor never blocks on the file the scanner wrote and the message is never held
// whole.
#include <memory>
#include <string>

#include "filters/message_body.h"
#include "gateway/session/deliverable_body.h"

namespace mailgate::session {

class ReplacementBody final : public DeliverableBody, public std::enable_shared_from_this<ReplacementBody> {
 public:
  struct Async {
    // Runs job on another thread; false when its queue is full.
    std::function<bool(std::function<void()>)> submit;
    // Runs fn later on the owner's thread (or never, if the owner is gone).
    std::function<void(std::function<void()>)> post;
  };
  // Without io.submit (tests), reads happen at once on the caller's thread.
  ReplacementBody(std::shared_ptr<const filters::MessageBody> body, Async io)
      : body_(std::move(body)), io_(std::move(io)) {}

  uint64_t size() const override { return body_->size(); }
  bool inFile() const override { return true; }
  std::string_view memory() const override { return {}; }
  Fetch fetch(uint64_t off, size_t n, std::string* out, std::function<void()> ready) override;
  const std::string& error() const override { return error_; }
  // The scanner's message itself, for a blocking reader (the queue's put).
  const std::shared_ptr<const filters::MessageBody>& source() const { return body_; }

 private:
  void readDone(uint64_t off, size_t n, bool ok, std::string data);

  std::shared_ptr<const filters::MessageBody> body_;
  Async io_;
  std::string error_;
  bool inflight_ = false;
  bool held_ = false;
  bool held_ok_ = false;
  uint64_t held_off_ = 0;
  size_t held_n_ = 0;
  std::string held_data_;
  std::function<void()> ready_;
};

}  // namespace mailgate::session
