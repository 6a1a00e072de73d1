#pragma once
// GeoIP through libmaxminddb: one or more mmdb files (for instance an IPv4 and an IPv6
// file), looked up in order, and a dot-separated path to the value in a record
// ("country_code" in the ip-location-db files, "country.iso_code" in GeoLite2,
// "autonomous_system_number"). Opened with MMDB_MODE_MMAP; immutable once open and
// safe to share between threads. A reload opens a new GeoDb; the caller keeps the old
// one if that fails.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "filters/policy/net_prefix.h"

struct MMDB_s;

namespace mailgate::filters::policy {

class GeoDb {
 public:
  // Opens every file; nullptr and *error ("FILE: why") when one fails to open or is corrupt
  // (or "bad field path" when `field` has an empty part).
  static std::unique_ptr<GeoDb> open(const std::vector<std::string>& paths, const std::string& field,
                                     std::string* error);
  ~GeoDb();
  GeoDb(const GeoDb&) = delete;
  GeoDb& operator=(const GeoDb&) = delete;
  // The value at the field path as text (strings as they are, integers in decimal);
  // empty when no file has the address or the record lacks the field.
  std::string lookup(const NetAddr& addr) const;
  // The value as a number (ASN); 0 when absent or not a number ("AS64500" is 64500).
  uint32_t lookupNumber(const NetAddr& addr) const;
  const std::vector<std::string>& paths() const { return paths_; }

 private:
  GeoDb() = default;
  std::vector<std::string> paths_;
  std::vector<std::string> field_path_;  // split at '.'
  std::vector<const char*> field_ptrs_;  // into field_path_, null-terminated, for MMDB_aget_value
  std::vector<MMDB_s*> dbs_;
};

}  // namespace mailgate::filters::policy
