#pragma once
// One field of a message's header section (RFC 5322 §2.2), for the logs: the
// Message-ID an operator follows a message by. Pure: no I/O, no allocation beyond
// the answer.
#include <cstddef>
#include <string>
#include <string_view>

namespace mailgate::codec {

// The value of the first field `name` (case-insensitive) in `head` (the start of a
// message, CRLF line ends; the header section ends at the first empty line or where
// `head` ends), unfolded, without leading and trailing blanks, cut at max octets.
// Empty when there is no such field.
std::string headerField(std::string_view head, std::string_view name, size_t max = 256);

}  // namespace mailgate::codec
