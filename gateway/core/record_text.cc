#include "gateway/core/record_text.h"

namespace mailgate::core {

namespace {
int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

bool keepPrintable(unsigned char c) { return c > 0x20 && c < 0x7f && c != '%'; }
bool keepPrintableOrSpace(unsigned char c) { return c == ' ' || keepPrintable(c); }

void percentEscapeTo(std::string_view in, KeepOctet keep, std::string* out) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : in) {
    if (c != '%' && keep(c)) {
      out->push_back(static_cast<char>(c));
    } else {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xF]);
    }
  }
}

std::string percentEscape(std::string_view in, KeepOctet keep) {
  std::string out;
  percentEscapeTo(in, keep, &out);
  return out;
}

bool percentUnescape(std::string_view in, KeepOctet keep, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (c != '%') {
      if (keep && !keep(c)) return false;
      out->push_back(static_cast<char>(c));
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = hexValue(in[i + 1]), lo = hexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

bool parseDecimal(std::string_view s, uint64_t max, bool canonical, uint64_t* out) {
  if (s.empty() || s.size() > 20 || (canonical && s.size() > 1 && s[0] == '0')) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const auto d = static_cast<uint64_t>(c - '0');
    if (v > (max - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

}  // namespace mailgate::core
