#include "filters/content_hook.h"

#include <exception>

#include "filters/scan_result.h"

namespace mailgate::filters {

namespace {

class ContentHookFilter final : public Filter {
 public:
  ContentHookFilter(std::shared_ptr<ContentHook> hook, const ContentHookOptions& options, core::Executor* executor)
      : hook_(std::move(hook)), options_(options), executor_(executor) {}
  std::string_view name() const override { return hook_->name(); }
  uint32_t stages() const override { return stageBit(Stage::kData); }
  std::chrono::milliseconds deadline() const override { return options_.deadline; }
  Verdict onError() const override { return options_.on_error; }

  Verdict onStage(Stage, SessionFacts& facts, const Resumer& resume) override {
    if (!facts.message) return Verdict::next();
    // Until its answer replaces it: what the scan header says if the deadline passes.
    recordScanResult(facts, hook_->name(), kScanErrorTimeout);
    // The job owns copies of what it reads: the session may end while it runs.
    auto hook = hook_;
    auto body = facts.message;
    auto snapshot = std::make_shared<const SessionFacts>(facts);
    const Verdict on_error = options_.on_error;
    const bool queued = executor_ && executor_->submit(
                                         [hook, body, snapshot, resume, on_error] {
                                           Verdict v;
                                           try {
                                             v = hook->inspect(*snapshot, *body);
                                           } catch (const std::exception& e) {
                                             v = on_error;
                                             v.reason = std::string("hook failed: ") + e.what();
                                           } catch (...) {
                                             v = on_error;
                                             v.reason = "hook failed";
                                           }
                                           if (v.action == Action::kPending) v = on_error;
                                           resume([v = std::move(v), name = std::string(hook->name())](
                                                      SessionFacts& f) {
                                             recordScanResult(f, name, scanOutcomeOf(v));
                                             return v;
                                           });
                                         },
                                         options_.deadline);
    if (!queued) {
      Verdict v = options_.on_error;
      v.reason = "content executor queue full";
      return v;
    }
    return Verdict::pending();
  }

 private:
  std::shared_ptr<ContentHook> hook_;
  ContentHookOptions options_;
  core::Executor* executor_;
};

}  // namespace

std::unique_ptr<Filter> ContentHookFactory::create(const SessionFacts&, const FilterServices& services) const {
  return std::make_unique<ContentHookFilter>(hook_, options_, services.content);
}

}  // namespace mailgate::filters
