#pragma once
// The admin endpoint's quarantine routes, the pure part: JSON and table forms of the
// entries, the list's query parameters, a release's outcome.
//   GET    /quarantine[?format=table][&limit=N][&rcpt=S][&from=S]  the entries, newest first
//   GET    /quarantine/ID                                          one entry's metadata
//   POST   /quarantine/ID/release                                  deliver it to its node(s), once
//   DELETE /quarantine/ID                                          delete it
#include <string>
#include <string_view>
#include <vector>

#include "filters/quarantine.h"
#include "gateway/admin/bans_api.h"
#include "gateway/session/quarantine_release.h"

namespace mailgate::admin {

inline constexpr size_t kQuarantineListDefault = 100;
inline constexpr size_t kQuarantineListMax = 10000;

std::string quarantineEntryJson(const filters::QuarantineEntry& e);
std::string quarantineJson(const std::vector<filters::QuarantineEntry>& entries);
std::string quarantineTable(const std::vector<filters::QuarantineEntry>& entries);
std::string releaseJson(const std::string& id, const session::ReleaseOutcome& r);

// limit (1..kQuarantineListMax), rcpt, from; false and *error on a bad limit.
bool parseQuarantineList(const HttpRequest& req, filters::QuarantineFilter* filter, size_t* limit,
                         std::string* error);

// "/quarantine/ID[/release]" → ID and whether it is the release route; false for
// any other path (a malformed ID included).
bool parseQuarantinePath(std::string_view path, std::string* id, bool* release);

}  // namespace mailgate::admin
