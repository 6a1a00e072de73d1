#pragma once
// A content hook with a blocking interface (a library scanner, a local check), run
// at the data stage on the content executor, never on a reactor or a directory
// thread. It is a filter like the others: pending while it runs, bounded by its
// deadline (at which its on_error applies and its late answer is dropped), and its
// verdict rendered by the session. Network scanners (clamd, ICAP, milter) are
// filters of their own that speak to their daemons on the session's reactor.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "filters/filter.h"

namespace mailgate::filters {

class ContentHook {
 public:
  virtual ~ContentHook() = default;
  virtual std::string_view name() const = 0;
  // Thread-safe; blocking; runs on the content executor. An exception is the hook's
  // failure (its on_error applies), never an acceptance.
  virtual Verdict inspect(const SessionFacts& facts, const MessageBody& body) = 0;
};

struct ContentHookOptions {
  std::chrono::milliseconds deadline{60000};
  Verdict on_error = Verdict::of(Action::kTempfail, "hook failed");
};

class ContentHookFactory final : public FilterFactory {
 public:
  ContentHookFactory(std::shared_ptr<ContentHook> hook, ContentHookOptions options)
      : hook_(std::move(hook)), options_(std::move(options)) {}
  std::string_view name() const override { return hook_->name(); }
  std::unique_ptr<Filter> create(const SessionFacts& facts, const FilterServices& services) const override;

 private:
  std::shared_ptr<ContentHook> hook_;
  ContentHookOptions options_;
};

}  // namespace mailgate::filters
