#pragma once
// The server side of SASL PLAIN (RFC 4616) and LOGIN for the front ends: which
// challenge to send next and, at the end, the credentials. Protocol wording (IMAP
// tagged replies, POP3 -ERR) stays with the session.
#include <string>
#include <string_view>

namespace mailgate::session {

class SaslExchange {
 public:
  enum class Step {
    kChallenge,  // send challenge() (base64, may be empty) and read one more line
    kDone,       // user() and password() are set
    kCancelled,  // the client sent "*"
    kMalformed,  // not base64
    kRejected,   // decoded but unacceptable (e.g. an authorization identity)
  };

  // false when the mechanism is not offered.
  bool begin(std::string_view mechanism);
  // The first challenge of the mechanism (when the client gave no initial response).
  std::string_view initialChallenge() const;
  // One client response (base64, "=" for an empty initial response, or "*").
  Step respond(std::string_view line);
  std::string_view challenge() const { return challenge_; }
  std::string& user() { return user_; }
  std::string& password() { return password_; }
  bool active() const { return mech_ != Mech::kNone; }
  void reset();

 private:
  enum class Mech { kNone, kPlain, kLogin };
  Mech mech_ = Mech::kNone;
  bool have_user_ = false;
  std::string_view challenge_;
  std::string user_, password_;
};

}  // namespace mailgate::session
