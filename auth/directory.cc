#include "auth/directory.h"

namespace mailgate::auth {

namespace {
bool equalsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    unsigned char x = static_cast<unsigned char>(a[i]), y = static_cast<unsigned char>(b[i]);
    if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}
}  // namespace

SenderResult senderIsLogin(std::string_view user, std::string_view address) {
  return equalsNoCase(user, address) ? SenderResult::kAllowed : SenderResult::kDenied;
}

}  // namespace mailgate::auth
