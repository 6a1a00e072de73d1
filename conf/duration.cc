// Durations ("250ms", "30s", "5m", "1h", "2d"; a bare number is seconds) and sizes
// ("512", "64K", "50M", "1G"; multiples of 1024). Both strict: decimal digits, then
// at most one unit, nothing else; every multiplication is overflow-checked.
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

// Reads the leading decimal digits of text into *value; returns how many were read
// (0 = none, or overflow of uint64_t).
size_t readDigits(std::string_view text, uint64_t* value) {
  uint64_t v = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    const auto digit = static_cast<uint64_t>(text[i] - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) return 0;
    v = v * 10 + digit;
  }
  *value = v;
  return i;
}

bool multiply(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

}  // namespace

bool parseDuration(const std::string& text, Duration* out) {
  uint64_t value = 0;
  const size_t n = readDigits(text, &value);
  if (n == 0) return false;
  const std::string_view unit = std::string_view(text).substr(n);
  uint64_t ms_per_unit = 0;
  if (unit.empty() || unit == "s") {
    ms_per_unit = 1000;
  } else if (unit == "ms") {
    ms_per_unit = 1;
  } else if (unit == "m") {
    ms_per_unit = 60ULL * 1000;
  } else if (unit == "h") {
    ms_per_unit = 3600ULL * 1000;
  } else if (unit == "d") {
    ms_per_unit = 86400ULL * 1000;
  } else {
    return false;
  }
  uint64_t ms = 0;
  if (!multiply(value, ms_per_unit, &ms)) return false;
  if (ms > static_cast<uint64_t>(std::numeric_limits<Duration::rep>::max())) return false;
  *out = Duration(static_cast<Duration::rep>(ms));
  return true;
}

bool parseSize(const std::string& text, uint64_t* out) {
  uint64_t value = 0;
  const size_t n = readDigits(text, &value);
  if (n == 0) return false;
  const std::string_view unit = std::string_view(text).substr(n);
  uint64_t multiplier = 0;
  if (unit.empty()) {
    multiplier = 1;
  } else if (unit == "K" || unit == "k") {
    multiplier = 1ULL << 10;
  } else if (unit == "M" || unit == "m") {
    multiplier = 1ULL << 20;
  } else if (unit == "G" || unit == "g") {
    multiplier = 1ULL << 30;
  } else {
    return false;
  }
  return multiply(value, multiplier, out);
}

}  // namespace mailgate::conf
