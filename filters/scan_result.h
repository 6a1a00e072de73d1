#pragma once
// What each scanner made of a message, and the one header that records it.
//
// Every scanner filter (clamd, ICAP, milter, DLP) records its outcome in the
// session's facts (SessionFacts::scan_results) at the data stage; when the message
// goes on to its storage node the session adds one header with all of them, in the
// order the scanners ran:
//   X-Mailgate-Scan: clamav=clean; icap=modified; dlp=tagged; rspamd=skipped(breaker)
// Outcomes are short tokens (kScan* below; a scanner may add its own, such as
// "tagged"): letters, digits and - _ . ( ) only. Pure functions: no I/O, no logging.
#include <string>
#include <string_view>

#include "filters/session_facts.h"

namespace mailgate::filters {

inline constexpr std::string_view kScanHeaderName = "X-Mailgate-Scan";

// The outcomes every scanner type shares.
inline constexpr std::string_view kScanClean = "clean";
inline constexpr std::string_view kScanInfected = "infected";              // a virus (the message is refused)
inline constexpr std::string_view kScanUnscannedOversize = "unscanned(oversize)";  // over max_size / the scanner's limit
inline constexpr std::string_view kScanSkippedBreaker = "skipped(breaker)";  // the circuit breaker is open
inline constexpr std::string_view kScanErrorTimeout = "error(timeout)";      // no answer within timeouts.scan
inline constexpr std::string_view kScanErrorUnavailable = "error(unavailable)";  // no endpoint, connection lost
inline constexpr std::string_view kScanErrorScanner = "error(scanner)";      // the scanner answered an error
inline constexpr std::string_view kScanErrorInternal = "error(internal)";    // the gateway's side failed

// Records (or replaces) the outcome of `scanner` for the current message. A scanner
// may record a provisional outcome when it starts waiting (kScanErrorTimeout: what
// stands if its deadline passes) and replace it with the answer.
void recordScanResult(SessionFacts& facts, std::string_view scanner, std::string_view outcome);

// "X-Mailgate-Scan: a=b; c=d" (no CRLF), or "" when no scanner recorded anything.
// Characters outside the token set are replaced with '_'; the line stays within 998
// octets (RFC 5322 §2.1.1): outcomes that do not fit are left out, and "..." says so.
std::string formatScanHeader(const SessionFacts& facts);

}  // namespace mailgate::filters
