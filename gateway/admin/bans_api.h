#pragma once
// The admin endpoint's ban routes, the pure part: the request line and its query
// string, the JSON and table forms of the ban list, and the ban parameters.
//   GET    /bans[?format=table]                 the bans in force (JSON, or a text table)
//   POST   /bans?net=NET[&ttl=1h][&reason=TEXT]  ban NET (an address or a network)
//   DELETE /bans?net=NET   or   POST /bans/lift?net=NET   lift the ban on exactly NET
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "filters/policy/bans.h"

namespace mailgate::admin {

struct HttpRequest {
  std::string method;
  std::string path;                                        // without the query
  std::vector<std::pair<std::string, std::string>> query;  // decoded, in order
  // The first value of `name`, or nullptr.
  const std::string* param(std::string_view name) const;
};

// Parses "METHOD /path?a=b&c=d HTTP/1.x" (the first line of the request). false when
// it is not one (no method, no path starting with '/', bad %-escape).
bool parseRequestLine(std::string_view line, HttpRequest* out);
// %XX and '+' (space) decoded; false on a bad escape or a NUL.
bool percentDecode(std::string_view in, std::string* out);
// Everything but unreserved characters (RFC 3986) as %XX.
std::string percentEncode(std::string_view in);

// "2026-12-04T23:09:09Z"
std::string isoTime(int64_t unix_ms);
std::string jsonEscape(std::string_view s);
// The admin's text tables (the CLI prints them): s filled with spaces to width w;
// control octets as '?'.
std::string padRight(std::string s, size_t w);
std::string printableText(std::string s);
// ?limit=N of a list request: default dflt, 1 to max; false with *error otherwise.
bool listLimit(const HttpRequest& req, size_t dflt, size_t max, size_t* out, std::string* error);

std::string bansJson(const std::vector<filters::policy::Ban>& bans);
std::string bansTable(const std::vector<filters::policy::Ban>& bans);
std::string banJson(const filters::policy::Ban& ban);

struct BanRequest {
  filters::policy::NetAddr net;
  std::chrono::milliseconds ttl{3600000};
  std::string reason = "admin";
};
inline constexpr std::chrono::milliseconds kMaxBanTtl{366LL * 86400000};
inline constexpr size_t kMaxReason = 200;
// The parameters of POST /bans (net required, ttl 1s..366d, reason printable and at
// most kMaxReason bytes); false and *error when they are not right.
bool parseBanRequest(const HttpRequest& req, BanRequest* out, std::string* error);
// The net of a lift; false and *error when absent or not a network.
bool parseLiftRequest(const HttpRequest& req, filters::policy::NetAddr* out, std::string* error);

}  // namespace mailgate::admin
