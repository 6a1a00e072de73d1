#pragma once
// clamd's INSTREAM protocol (clamd(8)), as a pure codec: no I/O, no clock, no logging.
//
// Request: "zINSTREAM\0", then the message in chunks, each a 4-octet big-endian length
// and that many octets, then a zero length. Reply (z-prefixed commands end theirs
// with NUL; a LF is accepted too): "stream: OK", "stream: NAME FOUND",
// "INSTREAM size limit exceeded. ERROR", or another error text. The reply parser
// accepts any split of its input and bounds the reply's length.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mailgate::filters {

// The command that opens a stream.
std::string_view clamdInstreamCommand();
// Appends one chunk (length prefix and data) to *out; an empty chunk is the terminator.
void clamdAppendChunk(std::string_view data, std::string* out);

enum class ClamdStatus : uint8_t {
  kNeedMore,   // no complete reply yet
  kClean,      // stream: OK
  kFound,      // stream: NAME FOUND (virusName())
  kSizeLimit,  // INSTREAM size limit exceeded
  kError,      // any other reply, or one too long (errorText())
};

struct ClamdFeed {
  ClamdStatus status = ClamdStatus::kNeedMore;
  size_t consumed = 0;
};

class ClamdReplyParser {
 public:
  static constexpr size_t kDefaultMaxReply = 1024;
  explicit ClamdReplyParser(size_t max_reply = kDefaultMaxReply) : max_(max_reply) {}

  // Consumes bytes up to and including the reply's terminator. Once the reply is
  // complete, further calls consume nothing and repeat its status.
  ClamdFeed feed(std::string_view bytes) noexcept;
  // The peer closed: a complete reply keeps its status; anything else is kError.
  ClamdStatus finish() noexcept;
  ClamdStatus status() const { return status_; }
  // kFound: the name as clamd gave it (not yet checked for a client's eyes).
  std::string_view virusName() const { return name_; }
  // kError: what went wrong (the reply's text, bounded, or a description).
  std::string_view errorText() const { return error_; }

 private:
  void complete() noexcept;

  size_t max_;
  std::string line_;
  std::string name_;
  std::string error_;
  ClamdStatus status_ = ClamdStatus::kNeedMore;
};

}  // namespace mailgate::filters
