#include "filters/policy/policy_state.h"

namespace mailgate::filters::policy {

PolicyState& policyState(size_t max_keys) {
  static PolicyState state(max_keys);
  return state;
}

}  // namespace mailgate::filters::policy
