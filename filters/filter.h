#pragma once
// The filter interface: one instance per session, built by a factory when the
// configuration loads. A filter looks at the session's facts at the stages it asks
// for and answers a verdict.
//
// Synchronous filters answer at once and may only touch memory: they run inline on
// the session's reactor. An asynchronous filter starts its work (on an executor, or
// on a connection of its own), answers Verdict::pending(), and later calls the
// Resumer it was given, from any thread, with a function that runs on the session's
// reactor, may read and fill the facts, and returns the verdict. An answer that
// arrives after the stage's deadline, after cancel() or after the session closed is
// dropped and counted. At the deadline the filter's failure action applies.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "filters/connection.h"
#include "filters/session_facts.h"
#include "gateway/core/executor.h"
#include "filters/stage.h"
#include "filters/verdict.h"

namespace mailgate::filters {

// Completes a pending step. Thread-safe, cheap to copy; calling it twice, or after
// the step is over, is harmless (the second and late answers are dropped).
class Resumer {
 public:
  using Answer = std::function<Verdict(SessionFacts&)>;
  using Post = std::function<void(uint64_t token, Answer answer)>;
  Resumer() = default;
  Resumer(std::shared_ptr<const Post> post, uint64_t token) : post_(std::move(post)), token_(token) {}
  void operator()(Answer answer) const {
    if (post_) (*post_)(token_, std::move(answer));
  }
  void operator()(Verdict v) const {
    (*this)([v = std::move(v)](SessionFacts&) { return v; });
  }
  uint64_t token() const { return token_; }

 private:
  std::shared_ptr<const Post> post_;
  uint64_t token_ = 0;
};

// Things that happen in a session besides its stages, which filters may count and
// answer (the policy's auth-failure and error limits, the per-user session limit).
enum class EventKind : uint8_t {
  kAuthFailure,  // the directory refused the credentials (not a temporary failure)
  kAuthSuccess,  // the directory accepted them; a terminal answer refuses the login
  kError,        // a bad command or a protocol violation
};

struct Event {
  EventKind kind = EventKind::kError;
  // kAuthFailure: a hash of the user and password tried (never the password itself),
  // so that the same wrong pair again is not counted again.
  uint64_t credential = 0;
};

class Filter {
 public:
  virtual ~Filter() = default;
  virtual std::string_view name() const = 0;
  // The stages this filter runs at (stageBit mask).
  virtual uint32_t stages() const = 0;
  virtual Verdict onStage(Stage stage, SessionFacts& facts, const Resumer& resume) = 0;
  // How long a pending answer may take.
  virtual std::chrono::milliseconds deadline() const { return std::chrono::seconds(30); }
  // What applies when the deadline passes (or the work fails without an answer).
  virtual Verdict onError() const {
    Verdict v = Verdict::of(Action::kTempfail, "timeout");
    return v;
  }
  // An event (synchronous, memory only). The answer: continue; delay (kAuthFailure:
  // the failure reply waits at least this long); or terminal (the session renders it
  // and closes, or for kAuthSuccess refuses the login).
  virtual Verdict onEvent(const Event& /*event*/, SessionFacts& /*facts*/) { return Verdict::next(); }
  // The pending work is abandoned (deadline, session closing): stop it if it can be.
  virtual void cancel() {}
};

// What a session lends its filters: the executors of its reactor, and connections of
// the session's own (on its reactor) to outside services.
struct FilterServices {
  core::Executor* directory = nullptr;  // libpq, password hashing, DNS
  core::Executor* content = nullptr;    // blocking content work; never the directory's threads
  ConnectionHost* connections = nullptr;
};

// Built once per configuration; makes the per-session instances.
class FilterFactory {
 public:
  virtual ~FilterFactory() = default;
  virtual std::string_view name() const = 0;
  // nullptr when the filter does not apply to this session (listener, protocol).
  virtual std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const = 0;
  // Whether its filters open connections of their own (FilterServices::connections):
  // the session sets those up only when a factory needs them.
  virtual bool usesConnections() const { return true; }
};

// The configured filters, in order; immutable, shared by the sessions of one snapshot.
class FilterSet {
 public:
  void add(std::shared_ptr<const FilterFactory> f) { factories_.push_back(std::move(f)); }
  bool empty() const { return factories_.empty(); }
  bool usesConnections() const {
    for (const auto& f : factories_)
      if (f->usesConnections()) return true;
    return false;
  }
  std::vector<std::unique_ptr<Filter>> instantiate(const SessionFacts& facts,
                                                   const FilterServices& services) const {
    std::vector<std::unique_ptr<Filter>> out;
    for (const auto& f : factories_)
      if (auto inst = f->create(facts, services)) out.push_back(std::move(inst));
    return out;
  }

 private:
  std::vector<std::shared_ptr<const FilterFactory>> factories_;
};

}  // namespace mailgate::filters
