#pragma once
// The points of a session at which policy and content filters run, in the order a
// session passes them (../docs/architecture.md, "the life of a session"):
//   connect  after the PROXY header, before the greeting or TLS
//   helo     SMTP HELO/EHLO
//   auth     credentials known (IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS/AUTH, SMTP AUTH)
//   mail     SMTP MAIL FROM
//   rcpt     SMTP RCPT TO
//   data     the message is spooled (SMTP DATA / BDAT LAST)
//   close    the session ends (no verdict is rendered)
#include <cstdint>
#include <string_view>

namespace mailgate::filters {

enum class Stage : uint8_t { kConnect = 0, kHelo, kAuth, kMail, kRcpt, kData, kClose };
constexpr unsigned kStageCount = 7;

constexpr uint32_t stageBit(Stage s) { return 1u << static_cast<unsigned>(s); }

std::string_view stageName(Stage s);
// "connect" -> kConnect; false when the name is not a stage.
bool parseStage(std::string_view name, Stage* out);

}  // namespace mailgate::filters
