#include "gateway/codec/header_field.h"

namespace mailgate::codec {

namespace {
bool sameFold(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}
bool blank(char c) { return c == ' ' || c == '\t'; }
}  // namespace

std::string headerField(std::string_view head, std::string_view name, size_t max) {
  size_t pos = 0;
  while (pos < head.size()) {
    size_t eol = head.find('\n', pos);
    const size_t end = eol == std::string_view::npos ? head.size() : eol;
    std::string_view line = head.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) return {};  // end of the header section
    const size_t next = eol == std::string_view::npos ? head.size() : eol + 1;
    const size_t colon = line.find(':');
    std::string_view field = colon == std::string_view::npos ? std::string_view() : line.substr(0, colon);
    while (!field.empty() && blank(field.back())) field.remove_suffix(1);
    if (!blank(line[0]) && colon != std::string_view::npos && sameFold(field, name)) {
      std::string value(line.substr(colon + 1));
      // Continuation lines (folding) belong to the field.
      size_t p = next;
      while (p < head.size() && blank(head[p]) && value.size() < max + 2) {
        size_t e = head.find('\n', p);
        const size_t stop = e == std::string_view::npos ? head.size() : e;
        std::string_view cont = head.substr(p, stop - p);
        if (!cont.empty() && cont.back() == '\r') cont.remove_suffix(1);
        value += ' ';
        value.append(cont);
        p = e == std::string_view::npos ? head.size() : e + 1;
      }
      size_t a = 0, b = value.size();
      while (a < b && blank(value[a])) a++;
      while (b > a && blank(value[b - 1])) b--;
      value = value.substr(a, b - a);
      if (value.size() > max) value.resize(max);
      return value;
    }
    pos = next;
  }
  return {};
}

}  // namespace mailgate::codec
