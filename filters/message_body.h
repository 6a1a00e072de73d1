#pragma once
// Read access to a spooled message (Received: header included, unstuffed, CRLF), as
// the data-stage filters and scanners see it. Shared: it outlives a session that
// closes while a scanner still reads it.
#include <cstddef>
#include <cstdint>
#include <string>

namespace mailgate::filters {

class MessageBody {
 public:
  virtual ~MessageBody() = default;
  virtual uint64_t size() const = 0;
  // Up to n octets at off into *out (replacing it); false on an I/O error.
  virtual bool read(uint64_t off, size_t n, std::string* out) const = 0;
};

}  // namespace mailgate::filters
