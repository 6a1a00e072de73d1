#include "gateway/session/verdict_render.h"

namespace mailgate::session {

namespace {
using filters::Action;
using filters::Stage;

// Whether the verdict is temporary (4xx class) once kReply is resolved by its code.
bool temporary(const filters::Verdict& v) {
  switch (v.action) {
    case Action::kReply:
      return v.code < 500;
    case Action::kTempfail:
    case Action::kClose:
      return true;
    case Action::kReject:
      return false;
    case Action::kContinue:
    case Action::kPending:
    case Action::kDelay:
    case Action::kAddHeader:
    case Action::kQuarantine:
      return false;
  }
  return true;
}

std::string withRef(std::string line, const filters::Verdict& v) {
  if (!v.ref.empty()) {
    line += " (ref ";
    line += v.ref;
    line += ')';
  }
  return line;
}

std::string_view defaultText(const filters::Verdict& v) {
  if (v.action == Action::kClose) return "Service not available, closing connection";
  return temporary(v) ? "Try again later" : "Rejected by policy";
}

std::string_view textOf(const filters::Verdict& v) { return v.text.empty() ? defaultText(v) : v.text; }
}  // namespace

Rendered renderSmtp(const filters::Verdict& v, Stage stage, std::string_view hostname) {
  Rendered r;
  const bool temp = temporary(v);
  uint16_t code = 0;
  std::string_view enhanced;
  if (v.action == Action::kClose || (stage == Stage::kConnect && temp)) {
    code = 421;
    enhanced = "4.7.0";
    r.close = true;
  } else if (temp) {
    switch (stage) {
      case Stage::kAuth:
        code = 454;
        enhanced = "4.7.0";
        break;
      case Stage::kRcpt:
        code = 450;
        enhanced = "4.7.1";
        break;
      case Stage::kConnect:
      case Stage::kHelo:
      case Stage::kMail:
      case Stage::kData:
      case Stage::kClose:
        code = 451;
        enhanced = "4.7.1";
        break;
    }
  } else {
    switch (stage) {
      case Stage::kAuth:
        code = 535;
        enhanced = "5.7.8";
        break;
      case Stage::kConnect:
        r.close = true;
        code = 554;
        enhanced = "5.7.1";
        break;
      case Stage::kData:
        code = 554;
        enhanced = "5.7.1";
        break;
      case Stage::kHelo:
      case Stage::kMail:
      case Stage::kRcpt:
      case Stage::kClose:
        code = 550;
        enhanced = "5.7.1";
        break;
    }
  }
  // A code of the verdict's own is kept when it is of the right class.
  if (v.code >= 400 && v.code < 600 && (v.code < 500) == temp && v.action != Action::kClose) {
    code = v.code;
    if (code == 421) r.close = true;
    if (!v.enhanced.empty() && v.enhanced[0] == static_cast<char>('0' + code / 100)) enhanced = v.enhanced;
  } else if (!v.enhanced.empty() && v.enhanced[0] == static_cast<char>('0' + code / 100) &&
             v.action != Action::kClose) {
    enhanced = v.enhanced;
  }
  r.line = std::to_string(code) + " " + std::string(enhanced) + " ";
  if (r.close && code == 421) {
    r.line += hostname;
    r.line += ' ';
  }
  r.line += textOf(v);
  r.line = withRef(std::move(r.line), v);
  return r;
}

Rendered renderImap(const filters::Verdict& v, Stage stage, std::string_view tag) {
  Rendered r;
  const bool temp = temporary(v);
  std::string code = v.response_code;
  if (v.action == Action::kClose || stage == Stage::kConnect || stage == Stage::kClose) {
    r.close = true;
    if (code.empty()) code = "UNAVAILABLE";
    r.line = "* BYE [" + code + "] " + std::string(textOf(v));
    r.line = withRef(std::move(r.line), v);
    return r;
  }
  if (code.empty()) code = temp ? "UNAVAILABLE" : "CONTACTADMIN";
  r.line = std::string(tag) + " NO [" + code + "] " + std::string(textOf(v));
  r.line = withRef(std::move(r.line), v);
  return r;
}

Rendered renderPop3(const filters::Verdict& v, Stage stage) {
  Rendered r;
  const bool temp = temporary(v);
  std::string code = v.response_code;
  if (v.action == Action::kClose || stage == Stage::kConnect || stage == Stage::kClose) r.close = true;
  if (code.empty()) {
    if (temp)
      code = "SYS/TEMP";
    else
      code = stage == Stage::kAuth ? "AUTH" : "SYS/PERM";
  }
  r.line = "-ERR [" + code + "] " + std::string(textOf(v));
  r.line = withRef(std::move(r.line), v);
  return r;
}

}  // namespace mailgate::session
