#include "filters/policy/policy_state.h"

namespace mailgate::filters::policy {

PolicyState& policyState(size_t max_keys) {
  static PolicyState s(max_keys);
  return s;
}

}  // namespace mailgate::filters::policy
