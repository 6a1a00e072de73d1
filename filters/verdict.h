#pragma once
// What a filter answers at a stage. Continue lets the next filter run; pending says
// the answer comes later (through the Resumer the filter was given); delay holds the
// session (a tarpit) and then continues; add_header (data stage) continues with a
// header for the message. The rest end the stage: the session renders them in its
// protocol (gateway/session/verdict_render.h) and logs the filter, the reason and a
// short reference that the client's reply repeats.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "filters/message_body.h"

namespace mailgate::filters {

enum class Action : uint8_t {
  kContinue,
  kPending,
  kDelay,       // hold for `delay`, then continue
  kAddHeader,   // data stage: add `header` to the message, continue
  kReply,       // refuse with exactly this reply: `code` (4xx/5xx), `enhanced`, `text`;
                // at the data stage, code 250 accepts and drops the message (a milter's
                // DISCARD): the client gets 250, the node never sees it
  kTempfail,    // refuse, temporary (SMTP 4xx, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP])
  kReject,      // refuse, permanent (SMTP 5xx)
  kClose,       // refuse and close the connection (SMTP 421, IMAP/POP3 BYE)
  kQuarantine,  // data stage: hold the message in quarantine (accepted)
};

std::string_view actionName(Action a);

// Whether the action ends the stage (every action but continue, pending, delay, add_header).
constexpr bool isTerminal(Action a) {
  return a != Action::kContinue && a != Action::kPending && a != Action::kDelay && a != Action::kAddHeader;
}

struct Verdict {
  Action action = Action::kContinue;
  uint16_t code = 0;          // SMTP reply code; 0 = the default for the action and stage
  std::string enhanced;       // RFC 3463 code ("4.7.1"); empty = the default
  std::string text;           // reply text for the client; empty = the default (validated before use)
  std::string response_code;  // IMAP/POP3 response code ("LIMIT", "IN-USE"); empty = the default
  std::chrono::milliseconds delay{0};  // kDelay
  std::string header;         // kAddHeader: "Name: value" (no CRLF)
  // Data stage, with kContinue or kAddHeader: the message from here on (a scanner that
  // rewrote it: a milter's header and body changes, an ICAP server's modified copy).
  // The later filters see it in SessionFacts::message, and it is what the node gets.
  std::shared_ptr<const MessageBody> replacement;
  // For the scan header (filters/scan_result.h): the scanner's outcome word when the
  // action alone does not tell it ("unscanned(oversize)"); empty = from the action.
  std::string scan_outcome;
  std::string filter;         // which filter decided (set by the chain)
  std::string reason;         // for the log, never for the client
  std::string ref;            // short reference that the reply and the log line repeat

  static Verdict next() { return Verdict{}; }
  static Verdict pending() {
    Verdict v;
    v.action = Action::kPending;
    return v;
  }
  static Verdict of(Action a, std::string reason = {}) {
    Verdict v;
    v.action = a;
    v.reason = std::move(reason);
    return v;
  }
};

// Text from a filter, a config or an outside scanner, checked before a client sees
// it: no CR, LF, NUL or other control octet, at most `max` octets (cut at a UTF-8
// boundary). Returns false (and leaves *out empty) when the text is refused.
bool cleanReplyText(std::string_view text, std::string* out, size_t max = 256);

// Parses "451 4.7.1 text" (the form configs and scanners give) into code, enhanced
// code and text; false when it is not a 4xx/5xx reply line.
bool parseReplyLine(std::string_view line, uint16_t* code, std::string* enhanced, std::string* text);

}  // namespace mailgate::filters
