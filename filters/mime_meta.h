#pragma once
// The header fields and attachment file names of a spooled message, for data-stage
// rules (`header: { re2: ... }`, `attachment.filename: { re2: ... }`). Parsed with
// GMime; no GMime type shows here. Pure: no logging, no I/O besides MessageBody::read.
#include <cstdint>
#include <string>
#include <vector>

#include "filters/message_body.h"

namespace mailgate::filters {

struct MessageMeta {
  // Top-level header fields "Name: value" in order, unfolded, RFC 2047 encoded-words
  // decoded, as UTF-8.
  std::vector<std::string> headers;
  // Every part's file name (Content-Disposition filename, RFC 2231 filename*= included,
  // else Content-Type name), decoded to UTF-8, in document order; nested multiparts and
  // attached message/rfc822 parts included.
  std::vector<std::string> attachment_names;
  // A limit was reached: the message was longer than max_bytes, or there were more
  // header fields or names than kept, or a field or name was cut.
  bool truncated = false;
};

inline constexpr uint64_t kMimeMetaDefaultMaxBytes = 50ull << 20;
inline constexpr size_t kMimeMetaMaxHeaders = 1000;
inline constexpr size_t kMimeMetaMaxNames = 1000;
inline constexpr size_t kMimeMetaMaxItemOctets = 998;  // per field or name, cut on a UTF-8 boundary

// Parses the message, reading at most max_bytes of it in chunks (never a copy of the
// whole message). Safe to call from several threads at once. Never throws; false with
// *error on an I/O error of the body (*out then holds nothing). A message that is not
// MIME at all gives what could be read of it (possibly nothing) and true.
bool extractMessageMeta(const MessageBody& body, MessageMeta* out, std::string* error,
                        uint64_t max_bytes = kMimeMetaDefaultMaxBytes);

}  // namespace mailgate::filters
