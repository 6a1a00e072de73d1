#pragma once
// /metrics: the Prometheus text exposition format (version 0.0.4) of every counter the
// gateway keeps. Names follow Prometheus' conventions: `mailgate_` prefix, counters end
// in `_total`, base units (`_seconds`, `_bytes`), one HELP and TYPE per family, label
// values escaped, no label whose values a client chooses (never per address or user).
// docs/operations.md lists every family.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/core/histogram.h"

namespace mailgate::io {
class WorkerPool;
}
namespace mailgate::session {
class Reactor;
}

namespace mailgate::admin {

// A label value as the text format wants it: backslash, double quote and line feed
// escaped (\\, \", \n); everything else as is.
std::string escapeLabelValue(std::string_view v);
// HELP text: backslash and line feed escaped.
std::string escapeHelp(std::string_view v);
// A sample value: integers exactly, others in the shortest form that reads back the same.
std::string formatValue(double v);

// Appends families to a string. A family's HELP and TYPE come once, before its samples;
// a family started twice is a bug (its second start is ignored, so the output stays
// valid; tests look for it through started()).
class MetricsWriter {
 public:
  using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;
  explicit MetricsWriter(std::string& out) : out_(out) {}

  // Starts a family: type is counter, gauge or histogram.
  MetricsWriter& family(std::string_view name, std::string_view type, std::string_view help);
  // A sample of the current family.
  MetricsWriter& sample(Labels labels, double v) { return sampleNamed(current_, labels, formatValue(v)); }
  MetricsWriter& sample(Labels labels, uint64_t v) { return sampleNamed(current_, labels, std::to_string(v)); }
  MetricsWriter& sample(Labels labels, int64_t v) { return sampleNamed(current_, labels, std::to_string(v)); }
  // A histogram's _bucket, _sum and _count samples (the current family is a histogram).
  MetricsWriter& histogram(Labels labels, const LatencyHistogram& h);
  // A family of one sample without labels.
  void single(std::string_view name, std::string_view type, std::string_view help, uint64_t v) {
    family(name, type, help).sample({}, v);
  }
  // Families started so far, in order (a repeated start appears twice).
  const std::vector<std::string>& started() const { return started_; }

 private:
  MetricsWriter& sampleNamed(std::string_view name, Labels labels, std::string_view value,
                             std::pair<std::string_view, std::string_view> extra = {});
  std::string& out_;
  std::string current_;
  std::set<std::string, std::less<>> seen_;
  std::vector<std::string> started_;
  bool skipping_ = false;  // the current family was a repeat: its samples are left out
};

// The /metrics body. `executors` are the process-wide pools (directory, content); each
// reactor's spool pool is added up under executor="spool".
std::string renderMetrics(const std::vector<std::unique_ptr<session::Reactor>>& reactors,
                          const std::vector<const io::WorkerPool*>& executors);

}  // namespace mailgate::admin
