// libFuzzer target for the DATA and BDAT decoders.
// Input: [config byte][split seed byte] data...
// - Differential: the data is decoded whole and in seed-derived chunks; status, the
//   position of the end, the error kind and offset and the sink's bytes must be equal.
// - Oracle (config bit 0 clear: no line/size limits): a simple reference decoder on
//   the whole string (end = first <CRLF>.<CRLF>, or ".<CRLF>" at the very start;
//   first framing error by detection offset; dot-unstuffed lines) must agree.
// - BDAT: the same data cut into chunks; octets are counted exactly, the sink gets
//   the data verbatim when there is no error, and the result is split-independent.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/codec/smtp_data.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::codec::BdatDecoder;
using mailgate::codec::BdatFeed;
using mailgate::codec::BdatLimits;
using mailgate::codec::BdatStatus;
using mailgate::codec::SmtpDataDecoder;
using mailgate::codec::SmtpDataError;
using mailgate::codec::SmtpDataFeed;
using mailgate::codec::SmtpDataLimits;
using mailgate::codec::SmtpDataStatus;
using mailgate::codec::SmtpStringSink;

using mailgate::fuzz::Chunker;

struct DataResult {
  int status = 0;  // 0 more, 1 end, 2 fatal
  size_t end = 0;
  SmtpDataError error = SmtpDataError::kNone;
  uint64_t error_offset = 0;
  std::string body;
  bool operator==(const DataResult& o) const {
    return status == o.status && end == o.end && error == o.error && error_offset == o.error_offset &&
           body == o.body;
  }
};

DataResult runData(std::string_view in, const SmtpDataLimits& lim, uint32_t seed) {
  SmtpDataDecoder d(lim);
  DataResult r;
  SmtpStringSink sink(&r.body);
  Chunker ch{seed};
  size_t pos = 0;
  while (pos < in.size()) {
    const std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    const SmtpDataFeed f = d.feed(chunk, sink);
    FUZZ_CHECK(f.consumed <= chunk.size());
    pos += f.consumed;
    if (f.status == SmtpDataStatus::kEnd) {
      r.status = 1;
      break;
    }
    if (f.status == SmtpDataStatus::kFatal) {
      r.status = 2;
      break;
    }
    FUZZ_CHECK(f.consumed == chunk.size());
  }
  r.end = pos;
  r.error = d.error();
  r.error_offset = d.errorOffset();
  FUZZ_CHECK(d.rawOctets() == pos);
  if (r.error == SmtpDataError::kNone) {
    FUZZ_CHECK(r.body.size() == d.messageSize());
    FUZZ_CHECK(r.body.size() <= lim.max_message);
  } else {
    FUZZ_CHECK(r.error_offset < pos);
  }
  return r;
}

// Reference decoder without limits.
DataResult reference(std::string_view in) {
  DataResult r;
  size_t content_end = 0;  // content = in[0, content_end), the terminator follows
  if (in.substr(0, 3) == ".\r\n") {
    r.status = 1;
    r.end = 3;
    content_end = 0;
  } else {
    const size_t p = in.find("\r\n.\r\n");
    if (p == std::string_view::npos) {
      r.status = 0;
      r.end = in.size();
      content_end = in.size();
    } else {
      r.status = 1;
      r.end = p + 5;
      content_end = p + 2;
    }
  }
  const std::string_view c = in.substr(0, content_end);
  // First error by detection offset; a bare CR is detected at the next octet.
  uint64_t best = UINT64_MAX;
  for (size_t i = 0; i < c.size(); ++i) {
    SmtpDataError e = SmtpDataError::kNone;
    uint64_t at = i;
    if (c[i] == '\0') {
      e = SmtpDataError::kNul;
    } else if (c[i] == '\n' && (i == 0 || c[i - 1] != '\r')) {
      e = SmtpDataError::kBareLf;
    } else if (c[i] == '\r' && i + 1 < in.size() && in[i + 1] != '\n') {
      e = SmtpDataError::kBareCr;
      at = i + 1;
    } else {
      continue;
    }
    // A tie (bare CR detected at a NUL/LF) goes to the bare CR.
    if (at < best || (at == best && e == SmtpDataError::kBareCr)) {
      best = at;
      r.error = e;
      r.error_offset = at;
    }
  }
  // The octet after the content's last CR may be the terminator's '.': a CR right before
  // content_end is always followed by LF (content ends in CRLF), so nothing to add.
  if (r.error == SmtpDataError::kNone && r.status == 1) {
    // Unstuff: remove a leading '.' of every line (lines start at 0 and after CRLF).
    bool line_start = true;
    for (size_t i = 0; i < c.size(); ++i) {
      if (line_start && c[i] == '.') {
        line_start = false;
        continue;
      }
      line_start = c[i] == '\n' && i > 0 && c[i - 1] == '\r';
      r.body += c[i];
    }
  }
  return r;
}

struct BdatResult {
  std::vector<size_t> events;
  SmtpDataError error = SmtpDataError::kNone;
  uint64_t error_offset = 0;
  std::string body;
  bool operator==(const BdatResult& o) const {
    return events == o.events && error == o.error && error_offset == o.error_offset && body == o.body;
  }
};

BdatResult runBdat(std::string_view in, const std::vector<uint64_t>& sizes, const BdatLimits& lim, bool binary,
                   uint32_t seed) {
  BdatDecoder d(lim);
  d.startMessage(binary);
  BdatResult r;
  SmtpStringSink sink(&r.body);
  Chunker ch{seed};
  size_t ci = 0, pos = 0;
  d.startChunk(sizes[0], sizes.size() == 1);
  while (ci < sizes.size()) {
    std::string_view chunk = in.substr(pos, ch.next(in.size() - pos));
    while (ci < sizes.size()) {
      const BdatFeed f = d.feed(chunk, sink);
      FUZZ_CHECK(f.consumed <= chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == BdatStatus::kNeedMore) {
        FUZZ_CHECK(chunk.empty());
        break;
      }
      FUZZ_CHECK((f.status == BdatStatus::kLast) == (ci + 1 == sizes.size()));
      r.events.push_back(pos);
      if (++ci < sizes.size()) d.startChunk(sizes[ci], ci + 1 == sizes.size());
    }
    if (pos >= in.size() && ci < sizes.size() && d.remaining() > 0) break;  // ran out of input
  }
  r.error = d.error();
  r.error_offset = d.errorOffset();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t cfg = data[0];
  const uint8_t seed = data[1];
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);

  SmtpDataLimits lim;
  const bool limited = (cfg & 1) != 0;
  // The reference knows no limits: the unlimited run must not check line length
  // either (the decoder's default is RFC 5321's 1000).
  lim.max_line = 0;
  if (limited) {
    lim.max_line = (cfg >> 1) & 15;  // 0 = unchecked
    lim.max_message = (cfg >> 3) & 31;
    lim.max_discard = (seed & 63);
  }
  const DataResult whole = runData(in, lim, 0);
  const DataResult split = runData(in, lim, 1u + seed);
  FUZZ_CHECK(whole == split);
  if (!limited) {
    const DataResult ref = reference(in);
    FUZZ_CHECK(whole.status == ref.status && whole.end == ref.end);
    FUZZ_CHECK(whole.error == ref.error && whole.error_offset == ref.error_offset);
    if (ref.status == 1 && ref.error == SmtpDataError::kNone) FUZZ_CHECK(whole.body == ref.body);
  }

  // BDAT: chunk sizes from the config byte, the rest of the input in the last chunk.
  std::vector<uint64_t> sizes;
  size_t left = in.size();
  for (unsigned k = 0; k < (cfg >> 5) && left > 0; ++k) {
    const size_t n = ((static_cast<size_t>(seed) >> k) & 7) % (left + 1);
    sizes.push_back(n);
    left -= n;
  }
  sizes.push_back(left);
  BdatLimits bl;
  if (limited) {
    bl.max_line = (cfg >> 1) & 15;
    bl.max_message = (cfg >> 3) & 31;
  }
  const bool binary = (seed & 0x80) != 0;
  const BdatResult bw = runBdat(in, sizes, bl, binary, 0);
  const BdatResult bs = runBdat(in, sizes, bl, binary, 1u + seed);
  FUZZ_CHECK(bw == bs);
  FUZZ_CHECK(bw.events.size() == sizes.size());
  FUZZ_CHECK(bw.events.back() == in.size());
  if (bw.error == SmtpDataError::kNone) FUZZ_CHECK(bw.body == in);
  if (!limited && !binary) {
    // Framing errors exactly when the whole content has a bare CR/LF or a NUL.
    bool bad = false;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] == '\0' || (in[i] == '\n' && (i == 0 || in[i - 1] != '\r')) ||
          (in[i] == '\r' && (i + 1 == in.size() || in[i + 1] != '\n'))) {
        bad = true;
      }
    }
    FUZZ_CHECK(bad == (bw.error != SmtpDataError::kNone));
  }
  return 0;
}
