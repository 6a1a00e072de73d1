#pragma once
// The directory answers "may this user log in with this password?". Calls are
// blocking and run on the worker pool, never on a reactor thread.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::auth {

enum class Verdict {
  kOk,
  kBadPassword,
  kUnknownUser,
  kTempFail,  // directory unavailable: the client gets a temporary failure
};

struct AuthResult {
  Verdict verdict = Verdict::kTempFail;
  std::string user;  // canonical user name (as stored), set when kOk
};

class Directory {
 public:
  virtual ~Directory() = default;
  // Thread-safe; blocking (may hash for tens of milliseconds).
  virtual AuthResult authenticate(std::string_view user, std::string_view password) = 0;
};

}  // namespace mailgate::auth
