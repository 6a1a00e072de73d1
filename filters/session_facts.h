#pragma once
// One record of what is known about a session, filled in as the session passes its
// stages; every filter, the directory and the content hooks read it. Addresses are
// the client's and the listener's after the PROXY header, if any. The session owns
// it on its reactor; work on another thread (a directory lookup) gets a copy.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "filters/message_body.h"

namespace mailgate::filters {

struct SessionFacts {
  std::string session_id;
  std::string listener;           // listener name
  std::string protocol;           // "imap" | "pop3" | "smtp" (submission is "smtp" on a submission listener)
  bool submission = false;        // the listener's protocol is submission
  std::string client_ip;
  uint16_t client_port = 0;
  std::string local_ip;
  uint16_t local_port = 0;
  bool secured = false;           // TLS on the client connection
  std::string tls_version;        // negotiated, empty without TLS
  std::string sni;                // server name the client asked for, if any

  // GeoIP, filled by the policy layer at connect (empty / 0 when unknown).
  std::string country;            // ISO 3166-1 alpha-2
  uint32_t asn = 0;

  std::string helo;               // SMTP HELO/EHLO argument
  std::string user;               // the login name given, canonical once authenticated
  bool authenticated = false;
  std::string method = "plain";   // "plain" (LOGIN, USER/PASS, SASL PLAIN/LOGIN)
  unsigned attempt = 1;           // 1-based login attempt within the session
  // When the routing map the login will be routed with last changed
  // (routing::Router::mapChangedAt; the epoch = no map), set on the directory's copy
  // just before the lookup: a cached route hint read before it is not used
  // (auth::CachingDirectory asks the directory again).
  std::chrono::steady_clock::time_point route_map{};

  // SMTP envelope.
  std::optional<std::string> from;  // sender local@domain ("" = null sender); unset before MAIL
  std::string mail_path;            // the MAIL path as sent, "<...>"
  std::vector<std::string> rcpts;   // accepted recipient paths, as sent
  std::string rcpt;                 // rcpt stage: the recipient being looked at, local@domain

  // data stage: the spooled message.
  std::shared_ptr<const MessageBody> message;
  // data stage: each scanner's outcome for this message, in the order they ran
  // (scanner name, outcome token: filters/scan_result.h); the session turns them
  // into the one X-Mailgate-Scan header of the delivered message.
  std::vector<std::pair<std::string, std::string>> scan_results;
};

}  // namespace mailgate::filters
