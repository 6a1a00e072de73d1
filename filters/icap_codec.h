#pragma once
// ICAP (RFC 3507) as a pure codec: no I/O, no clock, no logging.
//
// Requests: OPTIONS, and RESPMOD or REQMOD carrying the message as the encapsulated
// body behind a small HTTP header (res-hdr or req-hdr), chunked, optionally with a
// Preview (the first N octets, ended by "0; ieof" when they are the whole message).
//
// Responses: IcapResponseParser reads one response (status line, ICAP headers, the
// encapsulated HTTP header and the chunked body), any split of its input. It is a
// pull parser: each feed() stops at an event (headers complete, a piece of the body,
// the end) and says how much it consumed; body pieces are views into the input, so
// the caller streams them on without the parser holding the body.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/icap_url.h"

namespace mailgate::filters {

enum class IcapMethod : uint8_t { kReqmod, kRespmod };

using conf::IcapUrl;
using conf::parseIcapUrl;

// "OPTIONS icap://... ICAP/1.0" with Host and a null body.
std::string icapOptionsRequest(const IcapUrl& url);

// The head of a RESPMOD or REQMOD request: ICAP headers (Host, Allow: 204 when
// allow204, Preview when preview is set, Encapsulated) and the encapsulated HTTP
// header; the body follows as chunks (icapAppendChunk, icapAppendLastChunk).
std::string icapModRequestHead(IcapMethod method, const IcapUrl& url, std::optional<uint64_t> preview,
                               bool allow204);
// The encapsulated HTTP header the message travels behind.
std::string_view icapHttpHeader(IcapMethod method);
// One chunk ("SIZE-HEX CRLF data CRLF"); nothing for empty data.
void icapAppendChunk(std::string_view data, std::string* out);
// The last chunk: "0\r\n\r\n", or "0; ieof\r\n\r\n" at the end of a preview that
// holds the whole message.
void icapAppendLastChunk(bool ieof, std::string* out);

enum class IcapStatus : uint8_t {
  kNeedMore,  // everything was consumed; more input is needed
  kHeaders,   // the ICAP headers are complete and an encapsulated part follows (once)
  kBody,      // `body` is a piece of the encapsulated body
  kDone,      // the response is complete (for 100 Continue too); nothing more is consumed
  kError,     // malformed or over a limit (error()); nothing more is consumed
};

struct IcapFeed {
  IcapStatus status = IcapStatus::kNeedMore;
  size_t consumed = 0;
  std::string_view body;  // kBody: a view into the input given to feed()
};

struct IcapLimits {
  size_t max_line = 8192;        // a status or header line
  size_t max_headers = 65536;    // all ICAP header lines together
  size_t max_http_header = 65536;  // the encapsulated HTTP header(s)
  uint64_t max_body = uint64_t{1} << 32;  // the encapsulated body, decoded
};

// What a response said.
struct IcapResponse {
  int code = 0;
  std::string reason;
  std::string istag;
  std::optional<uint64_t> options_ttl;   // seconds
  std::vector<std::string> methods;      // OPTIONS: "RESPMOD", "REQMOD" (upper case)
  std::optional<uint64_t> preview;       // OPTIONS: Preview: N
  std::optional<uint64_t> max_connections;
  bool allow204 = false;                 // Allow: 204 (OPTIONS)
  std::string infection_found;           // X-Infection-Found (raw, unfolded)
  std::string virus_id;                  // X-Virus-ID
  std::string violations_found;          // X-Violations-Found (folded lines joined by '\n')
  bool has_encapsulated = false;
  // The encapsulated parts: which header sections and which body (if any).
  bool req_hdr = false, res_hdr = false;
  enum class Body : uint8_t { kNone, kReq, kRes, kOpt } body = Body::kNone;
  std::string http_header;  // the last encapsulated header section (res-hdr if present)
  bool ieof = false;        // the last chunk carried "ieof"
  uint64_t body_size = 0;

  bool offersMethod(std::string_view m) const;
  // A virus or violation name from X-Virus-ID, X-Infection-Found's Threat= or
  // X-Violations-Found's threat line (not yet checked for a client's eyes); empty when
  // none of those headers is there.
  std::string infectionName() const;
  bool infected() const { return !infection_found.empty() || !virus_id.empty() || !violations_found.empty(); }
  // The status code of the encapsulated HTTP response header, 0 if none or unreadable.
  int httpStatus() const;
};

class IcapResponseParser {
 public:
  explicit IcapResponseParser(IcapLimits limits = {}) : limits_(limits) {}

  IcapFeed feed(std::string_view bytes) noexcept;
  // For the next response on the same connection (after 100 Continue).
  void reset() noexcept;
  const IcapResponse& response() const { return r_; }
  IcapStatus status() const { return status_; }
  std::string_view error() const { return error_; }

 private:
  enum class State : uint8_t {
    kStatusLine,
    kHeaders,
    kHttpHeader,
    kChunkSize,
    kChunkData,
    kChunkDataEnd,
    kTrailers,
    kDone,
    kError
  };
  IcapFeed fail(std::string why, size_t consumed) noexcept;
  bool statusLine(std::string_view line) noexcept;
  bool headerLine(std::string_view line) noexcept;
  bool endOfHeaders() noexcept;
  bool chunkSizeLine(std::string_view line) noexcept;
  // Takes a line (CRLF-terminated) from bytes into line_; true when one is complete.
  bool takeLine(std::string_view bytes, size_t* used, bool* too_long) noexcept;
  void storeHeader() noexcept;

  IcapLimits limits_;
  IcapResponse r_;
  State state_ = State::kStatusLine;
  IcapStatus status_ = IcapStatus::kNeedMore;
  std::string line_;
  std::string header_;  // the header being unfolded
  size_t header_bytes_ = 0;
  uint64_t http_len_ = 0;  // octets of encapsulated HTTP header to read
  uint64_t http_skip_ = 0;  // of those, the sections before the last one
  std::string http_;
  uint64_t chunk_left_ = 0;
  bool last_chunk_ = false;
  std::string error_;
};

}  // namespace mailgate::filters
