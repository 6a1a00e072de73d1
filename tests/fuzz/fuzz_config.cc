// libFuzzer target for the configuration loader: any bytes in, a LoadResult out,
// never a crash, a leak or an exception. Relative file names resolve under a
// directory that does not exist, so the loader never reads the host's files by accident.
#include <cstddef>
#include <cstdint>
#include <string>

#include "conf/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const mailgate::conf::LoadResult r = mailgate::conf::loadConfigText(text, "/nonexistent/fuzz.yaml");
  // Invariant: a config comes back exactly when there is no error, and every error is printable.
  if ((r.config == nullptr) == r.errors.empty()) __builtin_trap();
  for (const auto& e : r.errors) {
    if (e.message.empty() || e.format().empty()) __builtin_trap();
  }
  return 0;
}
