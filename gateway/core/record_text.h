#pragma once
// The gateway's own text records on disk and in the database: the quarantine's and
// the exception queue's metadata, the queue's spool file names. Values are
// %XX-escaped, numbers are plain decimals. Pure: no I/O.
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::core {

// Which octets stand as they are; '%' is always escaped.
using KeepOctet = bool (*)(unsigned char c);
// Printable ASCII but ' ' and '%' / the same with ' '.
bool keepPrintable(unsigned char c);
bool keepPrintableOrSpace(unsigned char c);

// Octets keep() accepts as they are; '%' and every other octet as %XX (upper-case hex).
void percentEscapeTo(std::string_view in, KeepOctet keep, std::string* out);
std::string percentEscape(std::string_view in, KeepOctet keep);
// The inverse into *out (replaced). With keep, an octet outside a %XX that keep
// rejects is malformed (an encoder with the same keep never writes one); with
// nullptr any octet passes. false on a malformed or cut %XX.
bool percentUnescape(std::string_view in, KeepOctet keep, std::string* out);

// Decimal digits only (no sign, no space), at most `max` (overflow checked);
// canonical: no leading zero either (one text per number).
bool parseDecimal(std::string_view s, uint64_t max, bool canonical, uint64_t* out);

}  // namespace mailgate::core
