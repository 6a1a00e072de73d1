#pragma once
// A session's own blocking step as a filter of its chain: the directory lookups of
// LOGIN/AUTH, the sender check at MAIL, the recipient lookup at RCPT. The session
// sets the job just before it runs the stage; the job runs on an executor and
// returns what then runs on the session's reactor (only while the step is still
// the session's current one, so it may write into the session). The chain gives the
// step its deadline, its failure action and the late-answer accounting.
#include <chrono>
#include <functional>
#include <string>
#include <utility>

#include "filters/filter.h"

namespace mailgate::session {

class ExecutorStep final : public filters::Filter {
 public:
  // Runs on the executor; returns the answer for the reactor.
  using Job = std::function<filters::Resumer::Answer()>;

  // `timeout_reason` is a literal (it outlives the step).
  ExecutorStep(std::string name, uint32_t stages, core::Executor* executor, std::chrono::milliseconds deadline,
               const char* timeout_reason)
      : name_(std::move(name)),
        stages_(stages),
        executor_(executor),
        deadline_(deadline),
        timeout_reason_(timeout_reason) {}

  // The work of the next run of one of this step's stages (none: the step continues).
  void set(Job job) { job_ = std::move(job); }

  std::string_view name() const override { return name_; }
  uint32_t stages() const override { return stages_; }
  std::chrono::milliseconds deadline() const override { return deadline_; }
  filters::Verdict onError() const override { return filters::Verdict::of(filters::Action::kTempfail, timeout_reason_); }

  filters::Verdict onStage(filters::Stage, filters::SessionFacts&, const filters::Resumer& resume) override {
    if (!job_) return filters::Verdict::next();
    Job job = std::move(job_);
    job_ = nullptr;
    if (!executor_->submit([job = std::move(job), resume] { resume(job()); }, deadline_))
      return filters::Verdict::of(filters::Action::kTempfail, name_ + " queue full");
    return filters::Verdict::pending();
  }

 private:
  std::string name_;
  uint32_t stages_;
  core::Executor* executor_;
  std::chrono::milliseconds deadline_;
  const char* timeout_reason_;
  Job job_;
};

}  // namespace mailgate::session
