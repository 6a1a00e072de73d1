#pragma once
// A filter's terminal verdict in the client's protocol:
//   SMTP  4xx/5xx with RFC 3463 enhanced codes (421 and a close at connect and for close)
//   IMAP  tagged NO with an RFC 5530 response code; * BYE [UNAVAILABLE] at connect and for close
//   POP3  -ERR with an RFC 2449/3206 response code; a close at connect and for close
// Every refusal ends with "(ref XXXXXX)", which the session's log line repeats.
// The verdict's text was validated by the chain; an empty text gets the default.
#include <string>
#include <string_view>

#include "filters/stage.h"
#include "filters/verdict.h"

namespace mailgate::session {

struct Rendered {
  std::string line;    // without CRLF
  bool close = false;  // the session closes after the line
};

Rendered renderSmtp(const filters::Verdict& v, filters::Stage stage, std::string_view hostname);
// `tag` is the command's tag (ignored when the reply is an untagged BYE).
Rendered renderImap(const filters::Verdict& v, filters::Stage stage, std::string_view tag);
Rendered renderPop3(const filters::Verdict& v, filters::Stage stage);

}  // namespace mailgate::session
