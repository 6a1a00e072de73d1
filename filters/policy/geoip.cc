#include "filters/policy/geoip.h"

#include <maxminddb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace mailgate::filters::policy {

namespace {
void closeAll(std::vector<MMDB_s*>* dbs) {
  for (MMDB_s* db : *dbs) {
    MMDB_close(db);
    delete db;
  }
  dbs->clear();
}

// The address as a sockaddr for MMDB_lookup_sockaddr; false when it is none.
bool toSockaddr(const NetAddr& a, sockaddr_storage* ss) {
  std::memset(ss, 0, sizeof *ss);
  if (a.family == 4) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    std::memcpy(&sin.sin_addr, a.bytes, 4);
    std::memcpy(ss, &sin, sizeof sin);
    return true;
  }
  if (a.family == 6) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    std::memcpy(&sin6.sin6_addr, a.bytes, 16);
    std::memcpy(ss, &sin6, sizeof sin6);
    return true;
  }
  return false;
}
}  // namespace

std::unique_ptr<GeoDb> GeoDb::open(const std::vector<std::string>& paths, const std::string& field,
                                   std::string* error) {
  std::unique_ptr<GeoDb> g(new GeoDb());
  g->paths_ = paths;
  size_t start = 0;
  for (;;) {
    const size_t dot = field.find('.', start);
    g->field_path_.push_back(field.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  for (const std::string& part : g->field_path_) {
    if (part.empty()) {
      if (error) *error = "bad field path \"" + field + "\"";
      return nullptr;
    }
  }
  for (const std::string& part : g->field_path_) g->field_ptrs_.push_back(part.c_str());
  g->field_ptrs_.push_back(nullptr);

  for (const std::string& path : paths) {
    auto* db = new MMDB_s{};
    const int status = MMDB_open(path.c_str(), MMDB_MODE_MMAP, db);
    if (status != MMDB_SUCCESS) {
      delete db;
      if (error) {
        *error = path + ": " + MMDB_strerror(status);
        // MMDB_open does not keep errno; ask the file system why, when it can say.
        if ((status == MMDB_FILE_OPEN_ERROR || status == MMDB_IO_ERROR) && ::access(path.c_str(), R_OK) != 0)
          *error += std::string(": ") + std::strerror(errno);
      }
      return nullptr;  // the destructor closes the ones already open
    }
    g->dbs_.push_back(db);
  }
  return g;
}

GeoDb::~GeoDb() { closeAll(&dbs_); }

std::string GeoDb::lookup(const NetAddr& addr) const {
  sockaddr_storage ss;
  if (!toSockaddr(addr, &ss)) return {};
  for (MMDB_s* db : dbs_) {
    int mmdb_error = MMDB_SUCCESS;
    // An IPv6 address in an IPv4-only file is an error here: try the next file.
    MMDB_lookup_result_s r = MMDB_lookup_sockaddr(db, reinterpret_cast<const sockaddr*>(&ss), &mmdb_error);
    if (mmdb_error != MMDB_SUCCESS || !r.found_entry) continue;
    MMDB_entry_data_s d{};
    if (MMDB_aget_value(&r.entry, &d, field_ptrs_.data()) != MMDB_SUCCESS || !d.has_data) continue;
    switch (d.type) {
      case MMDB_DATA_TYPE_UTF8_STRING:
        if (d.data_size > 0) return std::string(d.utf8_string, d.data_size);
        break;
      case MMDB_DATA_TYPE_UINT16:
        return std::to_string(d.uint16);
      case MMDB_DATA_TYPE_UINT32:
        return std::to_string(d.uint32);
      case MMDB_DATA_TYPE_UINT64:
        return std::to_string(d.uint64);
      case MMDB_DATA_TYPE_INT32:
        return std::to_string(d.int32);
      default:
        break;  // maps, arrays, floats, bytes, booleans: not a key value
    }
  }
  return {};
}

uint32_t GeoDb::lookupNumber(const NetAddr& addr) const {
  const std::string s = lookup(addr);
  std::string_view v = s;
  if (v.size() > 2 && (v[0] == 'A' || v[0] == 'a') && (v[1] == 'S' || v[1] == 's')) v.remove_prefix(2);
  if (v.empty() || v[0] < '0' || v[0] > '9') return 0;
  uint32_t n = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || ptr != v.data() + v.size()) return 0;
  return n;
}

}  // namespace mailgate::filters::policy
