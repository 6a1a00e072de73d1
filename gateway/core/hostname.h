#pragma once
// The host's name (gethostname, read once; "localhost" when it has none): the SMTP
// greeting and Received: field, ban origins, cluster identity, quarantine release.
#include <string>

namespace mailgate::core {

const std::string& hostName();

}  // namespace mailgate::core
