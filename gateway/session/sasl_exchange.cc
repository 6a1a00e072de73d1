#include "gateway/session/sasl_exchange.h"

#include "auth/sasl.h"
#include "gateway/core/ascii.h"

namespace mailgate::session {

void SaslExchange::reset() {
  mech_ = Mech::kNone;
  have_user_ = false;
  challenge_ = {};
  user_.clear();
  password_.clear();
}

bool SaslExchange::begin(std::string_view mechanism) {
  reset();
  if (ascii::iequals(mechanism, "PLAIN"))
    mech_ = Mech::kPlain;
  else if (ascii::iequals(mechanism, "LOGIN"))
    mech_ = Mech::kLogin;
  return mech_ != Mech::kNone;
}

std::string_view SaslExchange::initialChallenge() const {
  return mech_ == Mech::kLogin ? auth::kLoginUsernamePrompt : std::string_view();
}

SaslExchange::Step SaslExchange::respond(std::string_view line) {
  if (line == "*") {
    reset();
    return Step::kCancelled;
  }
  if (line == "=") line = {};
  switch (mech_) {
    case Mech::kNone:
      return Step::kRejected;
    case Mech::kPlain: {
      mech_ = Mech::kNone;
      auto raw = auth::base64Decode(line);
      if (!raw) return Step::kMalformed;
      auto creds = auth::decodePlain(raw.value());
      if (!creds) return Step::kRejected;
      user_ = std::move(creds->authcid);
      password_ = std::move(creds->password);
      return Step::kDone;
    }
    case Mech::kLogin: {
      auto v = auth::decodeLoginResponse(line);
      if (!v) {
        reset();
        return Step::kMalformed;
      }
      if (!have_user_) {
        user_ = std::move(v.value());
        have_user_ = true;
        challenge_ = auth::kLoginPasswordPrompt;
        return Step::kChallenge;
      }
      password_ = std::move(v.value());
      mech_ = Mech::kNone;
      return Step::kDone;
    }
  }
  return Step::kRejected;
}

}  // namespace mailgate::session
