#pragma once
// A set of networks (a `lists` entry with cidrs and/or a file), immutable once built;
// membership by binary search over merged ranges, without allocating.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/policy/net_prefix.h"

namespace mailgate::filters::policy {

class IpSet {
 public:
  // Adds a network; false (and *error) when the text is not one.
  bool add(std::string_view cidr, std::string* error = nullptr);
  // Reads one CIDR a line ('#' starts a comment, blank lines skipped). false with
  // "FILE:LINE: message" in *error for the first bad line or an unreadable file.
  bool addFile(const std::string& path, std::string* error);
  // The same from text already read (addFile's parser; no I/O): "NAME:LINE: message".
  bool addLines(std::string_view text, std::string_view name, std::string* error);
  // Sorts and merges; call once after the last add.
  void finish();
  bool contains(const NetAddr& addr) const;
  // The number of ranges (after finish(), merged ones count once).
  size_t size() const { return v4_.size() + v6_.size(); }

  // __extension__ keeps -Wpedantic quiet about the GCC/Clang 128-bit integer.
  __extension__ typedef unsigned __int128 Uint128;

 private:
  struct Range4 { uint32_t lo, hi; };
  struct Range6 { Uint128 lo, hi; };
  std::vector<Range4> v4_;
  std::vector<Range6> v6_;
};

}  // namespace mailgate::filters::policy
