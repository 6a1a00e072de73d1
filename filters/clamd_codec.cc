#include "filters/clamd_codec.h"

namespace mailgate::filters {

std::string_view clamdInstreamCommand() {
  static constexpr char kCmd[] = "zINSTREAM";
  return std::string_view(kCmd, sizeof kCmd);  // the NUL included
}

void clamdAppendChunk(std::string_view data, std::string* out) {
  const uint64_t n = data.size();
  const uint32_t len = n > 0xffffffffu ? 0xffffffffu : static_cast<uint32_t>(n);
  const char hdr[4] = {static_cast<char>((len >> 24) & 0xff), static_cast<char>((len >> 16) & 0xff),
                       static_cast<char>((len >> 8) & 0xff), static_cast<char>(len & 0xff)};
  out->append(hdr, 4);
  out->append(data.substr(0, len));
}

ClamdFeed ClamdReplyParser::feed(std::string_view bytes) noexcept {
  if (status_ != ClamdStatus::kNeedMore) return {status_, 0};
  size_t i = 0;
  for (; i < bytes.size(); i++) {
    const char c = bytes[i];
    if (c == '\0' || c == '\n') {
      complete();
      return {status_, i + 1};
    }
    if (line_.size() >= max_) {
      status_ = ClamdStatus::kError;
      error_ = "reply longer than " + std::to_string(max_) + " octets";
      return {status_, i};
    }
    line_.push_back(c);
  }
  return {status_, i};
}

ClamdStatus ClamdReplyParser::finish() noexcept {
  if (status_ != ClamdStatus::kNeedMore) return status_;
  status_ = ClamdStatus::kError;
  error_ = line_.empty() ? "connection closed without a reply" : "connection closed in the middle of a reply";
  return status_;
}

void ClamdReplyParser::complete() noexcept {
  std::string_view r = line_;
  if (!r.empty() && r.back() == '\r') r.remove_suffix(1);
  constexpr std::string_view kStream = "stream: ";
  constexpr std::string_view kFoundSuffix = " FOUND";
  constexpr std::string_view kSizeLimit = "INSTREAM size limit exceeded";
  if (r.substr(0, kStream.size()) == kStream) {
    std::string_view rest = r.substr(kStream.size());
    if (rest == "OK") {
      status_ = ClamdStatus::kClean;
      return;
    }
    if (rest.size() > kFoundSuffix.size() && rest.substr(rest.size() - kFoundSuffix.size()) == kFoundSuffix) {
      name_ = std::string(rest.substr(0, rest.size() - kFoundSuffix.size()));
      status_ = ClamdStatus::kFound;
      return;
    }
  }
  if (r.substr(0, kSizeLimit.size()) == kSizeLimit) {
    status_ = ClamdStatus::kSizeLimit;
    return;
  }
  status_ = ClamdStatus::kError;
  error_ = r.empty() ? std::string("empty reply") : std::string(r);
}

}  // namespace mailgate::filters
