#include "filters/policy/ip_set.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

namespace mailgate::filters::policy {

namespace {
using U128 = IpSet::Uint128;

uint32_t v4Of(const NetAddr& a) {
  return (uint32_t{a.bytes[0]} << 24) | (uint32_t{a.bytes[1]} << 16) | (uint32_t{a.bytes[2]} << 8) |
         uint32_t{a.bytes[3]};
}

U128 v6Of(const NetAddr& a) {
  U128 v = 0;
  for (uint8_t b : a.bytes) v = (v << 8) | b;
  return v;
}

// The range [lo, hi] a network covers (its host bits all zero, then all one).
void range4(const NetAddr& a, uint32_t* lo, uint32_t* hi) {
  *lo = v4Of(a);
  *hi = a.prefix >= 32 ? *lo : *lo | (~uint32_t{0} >> a.prefix);
}

void range6(const NetAddr& a, U128* lo, U128* hi) {
  *lo = v6Of(a);
  *hi = a.prefix >= 128 ? *lo : *lo | (~U128{0} >> a.prefix);
}

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

// Sorts by start and merges ranges that overlap or touch.
template <typename R>
void mergeRanges(std::vector<R>* v) {
  std::sort(v->begin(), v->end(), [](const R& x, const R& y) { return x.lo < y.lo || (x.lo == y.lo && x.hi > y.hi); });
  size_t out = 0;
  for (size_t i = 0; i < v->size(); i++) {
    const R& r = (*v)[i];
    if (out > 0) {
      R& last = (*v)[out - 1];
      // Touching: last.hi + 1 == r.lo (no overflow: last.hi < r.lo <= max here).
      if (r.lo <= last.hi || r.lo - 1 == last.hi) {
        if (r.hi > last.hi) last.hi = r.hi;
        continue;
      }
    }
    (*v)[out++] = r;
  }
  v->resize(out);
  v->shrink_to_fit();
}

// Whether [lo, hi] lies inside one of the sorted, disjoint ranges.
template <typename R, typename V>
bool covered(const std::vector<R>& v, V lo, V hi) {
  // The first range starting after lo; the candidate is the one before it.
  auto it = std::upper_bound(v.begin(), v.end(), lo, [](V x, const R& r) { return x < r.lo; });
  if (it == v.begin()) return false;
  --it;
  return it->hi >= hi;
}
}  // namespace

bool IpSet::add(std::string_view cidr, std::string* error) {
  NetAddr a;
  if (!parseCidr(cidr, &a, error)) return false;
  if (a.family == 4) {
    Range4 r;
    range4(a, &r.lo, &r.hi);
    v4_.push_back(r);
  } else {
    Range6 r;
    range6(a, &r.lo, &r.hi);
    v6_.push_back(r);
  }
  return true;
}

bool IpSet::addFile(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (error) *error = path + ": " + std::strerror(errno);
    return false;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    if (error) *error = path + ": read error";
    return false;
  }
  return addLines(text, path, error);
}

bool IpSet::addLines(std::string_view text, std::string_view name, std::string* error) {
  size_t lineno = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view s = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    lineno++;
    const size_t hash = s.find('#');
    if (hash != std::string_view::npos) s = s.substr(0, hash);
    s = trim(s);
    if (s.empty()) continue;
    std::string why;
    if (!add(s, &why)) {
      if (error) *error = std::string(name) + ":" + std::to_string(lineno) + ": " + why;
      return false;
    }
  }
  return true;
}

void IpSet::finish() {
  mergeRanges(&v4_);
  mergeRanges(&v6_);
}

bool IpSet::contains(const NetAddr& addr) const {
  if (addr.family == 4) {
    uint32_t lo, hi;
    range4(addr, &lo, &hi);
    return covered(v4_, lo, hi);
  }
  if (addr.family == 6) {
    U128 lo, hi;
    range6(addr, &lo, &hi);
    return covered(v6_, lo, hi);
  }
  return false;
}

}  // namespace mailgate::filters::policy
