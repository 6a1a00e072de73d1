// Placeholder for CounterTable until filters/policy/counters.cc is merged: the
// session-level protections count in policyState().stats, whose PolicyState holds a
// CounterTable. Only construction and destruction are provided here; DELETE THIS
// FILE when counters.cc lands (the duplicate definitions then fail the link).
#include <mutex>

#include "filters/policy/counters.h"

namespace mailgate::filters::policy {

struct CounterTable::Shard {
  std::mutex mu;
};

CounterTable::CounterTable(size_t capacity, unsigned /*shards*/) : capacity_(capacity) {}
CounterTable::~CounterTable() = default;

}  // namespace mailgate::filters::policy
