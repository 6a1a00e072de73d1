#include "filters/verdict.h"

namespace mailgate::filters {

std::string_view actionName(Action a) {
  switch (a) {
    case Action::kContinue:
      return "continue";
    case Action::kPending:
      return "pending";
    case Action::kDelay:
      return "delay";
    case Action::kAddHeader:
      return "add_header";
    case Action::kReply:
      return "reply";
    case Action::kTempfail:
      return "tempfail";
    case Action::kReject:
      return "reject";
    case Action::kClose:
      return "close";
    case Action::kQuarantine:
      return "quarantine";
  }
  return "?";
}

bool cleanReplyText(std::string_view text, std::string* out, size_t max) {
  out->clear();
  for (unsigned char c : text)
    if (c < 0x20 || c == 0x7f) return false;  // CR, LF, NUL, TAB and the other controls
  if (text.size() > max) {
    size_t n = max;
    // Do not cut a UTF-8 sequence: back up over continuation octets.
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) n--;
    text = text.substr(0, n);
  }
  out->assign(text);
  return true;
}

bool parseReplyLine(std::string_view line, uint16_t* code, std::string* enhanced, std::string* text) {
  if (line.size() < 3) return false;
  if ((line[0] != '4' && line[0] != '5') || line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9')
    return false;
  if (line.size() > 3 && line[3] != ' ') return false;
  *code = static_cast<uint16_t>((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
  std::string_view rest = line.size() > 4 ? line.substr(4) : std::string_view();
  enhanced->clear();
  // class.subject.detail, class equal to the reply's first digit (RFC 3463).
  size_t sp = rest.find(' ');
  std::string_view first = rest.substr(0, sp);
  int dots = 0;
  bool digits_ok = first.size() >= 5 && first[0] == line[0] && first[1] == '.';
  for (char c : first) {
    if (c == '.')
      dots++;
    else if (c < '0' || c > '9')
      digits_ok = false;
  }
  if (digits_ok && dots == 2 && first.back() != '.') {
    enhanced->assign(first);
    rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
  }
  return cleanReplyText(rest, text);
}

}  // namespace mailgate::filters
