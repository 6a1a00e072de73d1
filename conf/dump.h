#pragma once
// The effective configuration as YAML (`mailgate --dump-config`, as `nginx -T` and
// `postconf`): every section, every key with its value after loading, defaults
// filled in (per-protocol listener defaults, the built-in limit rules). The text is a
// configuration the loader accepts and that means the same. Pure: no I/O.
#include <string>

#include "conf/config.h"

namespace mailgate::conf {

std::string dumpConfig(const Config& config);

// "250ms", "30s", "5m", "1h", "2d": the largest unit that divides the value exactly.
std::string formatDuration(Duration d);
// "512", "64K", "50M", "1G": the largest unit that divides the value exactly.
std::string formatSize(uint64_t octets);

}  // namespace mailgate::conf
