#pragma once
// A blocking SMTP/LMTP delivery of one stored message to a storage node, for the
// paths that run on a thread of their own and may wait: the quarantine's release
// (the admin thread) and the exception queue's runner. The session's own delivery
// is the asynchronous SmtpNodeClient on the reactor.
//
// The conversation: greeting, EHLO/LHLO, MAIL (BODY=8BITMIME, SMTPUTF8 as the
// message needs and the node offers), one RCPT per recipient, DATA, the dot-stuffed
// message, the final reply (LMTP: one per recipient taken), QUIT. No TLS to the node.
#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "filters/message_body.h"
#include "gateway/session/smtp_node_client.h"

namespace mailgate::session {

struct Runtime;

// "<local@Domain>" -> "local@domain" (the domain lower-cased), as RCPT looks it up.
std::string recipientAddress(const std::string& path);

struct NodeEnvelope {
  std::string mail_from;  // "<...>", "<>" or empty (the null sender)
  bool smtputf8 = false;
  bool body_8bit = false;
  std::string hostname;   // the gateway's name in EHLO/LHLO
  // No wait of the conversation (connect, send, reply) goes past this point (the
  // queue's lease ends there); past it the attempt fails with kNodeDeadlineError.
  // Zero: none (each step has its own timeout only).
  std::chrono::steady_clock::time_point deadline{};
};

// NodeAttempt::error when the attempt ran into NodeEnvelope::deadline (after the end
// of data too: sent_data is then true).
inline constexpr const char* kNodeDeadlineError = "deadline: the queue lease ends";

// Per recipient: accepted, or the node's reply ("452 4.2.2 ..."; the first digit
// tells temporary from permanent). `sent_data`: the end of data was sent (a lost
// connection after it may have delivered: no other node is tried then).
struct NodeAttempt {
  std::vector<std::string> accepted;
  std::vector<std::pair<std::string, std::string>> refused;
  bool sent_data = false;
  std::string error;  // the attempt failed as a whole (temporary)
};

NodeAttempt deliverToNode(const DeliveryTarget& target, const NodeEnvelope& env,
                          const std::vector<std::string>& rcpts, const filters::MessageBody& body);

// Recipients grouped by the node that serves them now, each group with its targets
// in failover order.
struct RecipientGroup {
  std::vector<DeliveryTarget> targets;
  std::vector<std::string> rcpts;
};
struct RoutedRecipients {
  std::map<std::string, RecipientGroup> groups;  // by the primary backend's name
  // Recipients with no route: why (temporary: the directory failed; else permanent).
  std::vector<std::pair<std::string, std::string>> unrouted;
  std::vector<std::pair<std::string, std::string>> unrouted_temporary;
};
// Routes each recipient as RCPT would now: the directory's mailbox for it (an alias
// resolves), then the routing map; `relay` (a submission listener's message) sends
// every recipient to routing.submission_relay over SMTP. `remote_to_relay`: a
// recipient the directory does not know goes to the submission relay (a DSN to a
// remote sender) instead of being unrouted.
RoutedRecipients routeRecipients(const Runtime& rt, const std::vector<std::string>& rcpts, bool relay,
                                 bool remote_to_relay);

}  // namespace mailgate::session
