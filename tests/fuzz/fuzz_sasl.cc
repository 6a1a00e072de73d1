// libFuzzer target: strict base64 and the SASL PLAIN/LOGIN decoders.
// Properties: no crash; whatever decodes re-encodes to the same text (strictness);
// decoded PLAIN credentials never carry NUL, CR or LF.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "auth/sasl.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  using namespace mailgate::auth;

  if (auto decoded = base64Decode(input)) {
    if (base64Encode(*decoded) != input) std::abort();  // only canonical base64 is accepted
  }
  if (auto plain = decodePlain(input)) {
    for (std::string_view f : {std::string_view(plain->authzid), std::string_view(plain->authcid),
                               std::string_view(plain->password)}) {
      if (f.find_first_of(std::string_view("\0\r\n", 3)) != std::string_view::npos) std::abort();
    }
    if (plain->authcid.empty() || plain->password.empty()) std::abort();
    if (!plain->authzid.empty() && plain->authzid != plain->authcid) std::abort();
  }
  (void)decodeLoginResponse(input);
  return 0;
}
