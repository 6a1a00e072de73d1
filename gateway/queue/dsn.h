#pragma once
// Delivery status notifications (RFC 3464, multipart/report; RFC 3462/6522): the
// message the gateway sends the envelope sender when recipients of a queued message
// failed for good or outlived queue.lifetime. None for the null sender, nor for a
// DSN (its sender is the null sender). Pure: builds text, does no I/O.
#include <cstdint>
#include <string>
#include <vector>

#include "gateway/queue/queue_store.h"

namespace mailgate::queue {

struct DsnRecipient {
  std::string addr;    // "<...>" as the client sent it
  std::string reply;   // the node's reply ("550 5.1.1 ..."), or why it failed
  bool expired = false;  // outlived the lifetime (Status 4.4.7), not refused
};

struct DsnInput {
  std::string reporting_mta;  // the gateway's host name
  const QueueEntry* original = nullptr;
  std::vector<DsnRecipient> failed;
  // The original message's header section (up to the empty line, at most kMaxHead
  // octets), returned as text/rfc822-headers.
  std::string original_headers;
  int64_t now_ms = 0;
};
inline constexpr size_t kDsnMaxHead = 64 * 1024;

// Whether the sender gets a DSN: not the null sender, not for a DSN.
bool dsnDue(const QueueEntry& original);

// The whole DSN message (header fields, CRLF line ends), From: MAILER-DAEMON@host,
// To: the original sender, Auto-Submitted: auto-replied, a fresh Message-ID.
std::string buildDsn(const DsnInput& in);

// The queue entry that carries the DSN: the null sender, the original sender as its
// one recipient, id = the original's + ".dsn" + seq (seq: 1 + the recipients the
// original had already reported, so that a later DSN for the same entry gets a new
// id), dsn = true, due now.
QueueEntry dsnEntry(const QueueEntry& original, size_t seq, int64_t now_ms);

}  // namespace mailgate::queue
