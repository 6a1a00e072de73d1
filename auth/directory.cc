#include "auth/directory.h"

#include "gateway/core/ascii.h"

namespace mailgate::auth {

SenderResult senderIsLogin(std::string_view user, std::string_view address) {
  return ascii::iequals(user, address) ? SenderResult::kAllowed : SenderResult::kDenied;
}

}  // namespace mailgate::auth
