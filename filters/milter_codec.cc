#include "filters/milter_codec.h"

#include <algorithm>

namespace mailgate::filters {

namespace {

void putU32(uint32_t v, std::string* out) {
  out->push_back(static_cast<char>((v >> 24) & 0xff));
  out->push_back(static_cast<char>((v >> 16) & 0xff));
  out->push_back(static_cast<char>((v >> 8) & 0xff));
  out->push_back(static_cast<char>(v & 0xff));
}

uint32_t getU32(std::string_view s) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(s[0])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(s[3]));
}

// A NUL-terminated string: the string as it goes on the wire (an embedded NUL would
// end it early, so it is cut there).
void putCString(std::string_view s, std::string* out) {
  const size_t nul = s.find('\0');
  out->append(s.substr(0, nul));
  out->push_back('\0');
}

// The next NUL-terminated string of *data; false when no NUL ends it.
bool takeCString(std::string_view* data, std::string* out) {
  const size_t nul = data->find('\0');
  if (nul == std::string_view::npos) return false;
  out->assign(data->substr(0, nul));
  data->remove_prefix(nul + 1);
  return true;
}

void argsPacket(MilterCommand cmd, const std::vector<std::string>& args, std::string* out) {
  std::string data;
  for (const auto& a : args) putCString(a, &data);
  milterAppendPacket(cmd, data, out);
}

}  // namespace

void milterAppendPacket(MilterCommand cmd, std::string_view data, std::string* out) {
  putU32(static_cast<uint32_t>(data.size() + 1), out);
  out->push_back(static_cast<char>(cmd));
  out->append(data);
}

void milterOptneg(uint32_t actions, uint32_t protocol, std::string* out) {
  std::string data;
  putU32(kMilterVersion, &data);
  putU32(actions, &data);
  putU32(protocol, &data);
  milterAppendPacket(MilterCommand::kOptneg, data, out);
}

void milterMacros(MilterCommand before, const MilterMacros& macros, std::string* out) {
  if (macros.empty()) return;
  std::string data(1, static_cast<char>(before));
  for (const auto& [name, value] : macros) {
    putCString(name, &data);
    putCString(value, &data);
  }
  milterAppendPacket(MilterCommand::kMacro, data, out);
}

void milterConnect(std::string_view hostname, char family, uint16_t port, std::string_view address,
                   std::string* out) {
  std::string data;
  putCString(hostname, &data);
  data.push_back(family);
  if (family != 'U') {
    data.push_back(static_cast<char>((port >> 8) & 0xff));
    data.push_back(static_cast<char>(port & 0xff));
    putCString(address, &data);
  }
  milterAppendPacket(MilterCommand::kConnect, data, out);
}

void milterHelo(std::string_view helo, std::string* out) {
  std::string data;
  putCString(helo, &data);
  milterAppendPacket(MilterCommand::kHelo, data, out);
}

void milterMail(const std::vector<std::string>& args, std::string* out) {
  argsPacket(MilterCommand::kMail, args, out);
}
void milterRcpt(const std::vector<std::string>& args, std::string* out) {
  argsPacket(MilterCommand::kRcpt, args, out);
}

void milterHeader(std::string_view name, std::string_view value, std::string* out) {
  std::string data;
  putCString(name, &data);
  putCString(value, &data);
  milterAppendPacket(MilterCommand::kHeader, data, out);
}

void milterEoh(std::string* out) { milterAppendPacket(MilterCommand::kEoh, {}, out); }

void milterBody(std::string_view chunk, std::string* out) {
  while (!chunk.empty()) {
    const size_t n = std::min(chunk.size(), kMilterChunk);
    milterAppendPacket(MilterCommand::kBody, chunk.substr(0, n), out);
    chunk.remove_prefix(n);
  }
}

void milterEob(std::string* out) { milterAppendPacket(MilterCommand::kBodyEob, {}, out); }
void milterAbort(std::string* out) { milterAppendPacket(MilterCommand::kAbort, {}, out); }
void milterQuit(std::string* out) { milterAppendPacket(MilterCommand::kQuit, {}, out); }

MilterFeed MilterReplyParser::fail(std::string why, size_t consumed) noexcept {
  failed_ = true;
  error_ = std::move(why);
  head_.clear();
  std::string().swap(data_);
  need_ = 0;
  return {MilterStatus::kError, consumed};
}

MilterFeed MilterReplyParser::feed(std::string_view bytes) noexcept {
  if (failed_) return {MilterStatus::kError, 0};
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (need_ == 0) {
      const size_t take = std::min<size_t>(4 - head_.size(), bytes.size() - pos);
      head_.append(bytes.substr(pos, take));
      pos += take;
      if (head_.size() < 4) break;
      const uint32_t len = getU32(head_);
      head_.clear();
      if (len == 0) return fail("empty packet", pos);
      if (len > max_) return fail("packet of " + std::to_string(len) + " octets, over the bound", pos);
      need_ = len;
      data_.clear();
      continue;
    }
    const size_t take = std::min(need_, bytes.size() - pos);
    data_.append(bytes.substr(pos, take));
    pos += take;
    need_ -= take;
    if (need_ > 0) break;
    if (!decode()) return fail(error_, pos);
    return {MilterStatus::kReply, pos};
  }
  return {MilterStatus::kNeedMore, pos};
}

bool MilterReplyParser::decode() noexcept {
  reply_ = MilterReply();
  const char cmd = data_[0];
  reply_.command = cmd;
  std::string_view d(data_);
  d.remove_prefix(1);
  auto noData = [&](MilterReplyKind k) {
    reply_.kind = k;
    return true;  // trailing octets are ignored, as libmilter's peers do
  };
  auto bad = [&](const char* what) {
    error_ = std::string("malformed '") +
             (cmd >= 0x20 && cmd < 0x7f ? std::string(1, cmd) : std::string("?")) + "' reply: " + what;
    return false;
  };
  switch (cmd) {
    case 'c':
      return noData(MilterReplyKind::kContinue);
    case 'a':
      return noData(MilterReplyKind::kAccept);
    case 'r':
      return noData(MilterReplyKind::kReject);
    case 't':
      return noData(MilterReplyKind::kTempfail);
    case 'd':
      return noData(MilterReplyKind::kDiscard);
    case 's':
      return noData(MilterReplyKind::kSkip);
    case 'p':
      return noData(MilterReplyKind::kProgress);
    case 'y':
      reply_.kind = MilterReplyKind::kReplyCode;
      if (!takeCString(&d, &reply_.text)) return bad("text not NUL-terminated");
      return true;
    case 'q':
      reply_.kind = MilterReplyKind::kQuarantine;
      if (!takeCString(&d, &reply_.text)) return bad("reason not NUL-terminated");
      return true;
    case 'h':
      reply_.kind = MilterReplyKind::kAddHeader;
      if (!takeCString(&d, &reply_.name) || !takeCString(&d, &reply_.value)) return bad("name or value");
      return true;
    case 'm':
    case 'i':
      reply_.kind = cmd == 'm' ? MilterReplyKind::kChangeHeader : MilterReplyKind::kInsertHeader;
      if (d.size() < 4) return bad("no index");
      reply_.index = getU32(d);
      d.remove_prefix(4);
      if (!takeCString(&d, &reply_.name) || !takeCString(&d, &reply_.value)) return bad("name or value");
      return true;
    case 'b':
      reply_.kind = MilterReplyKind::kReplaceBody;
      reply_.value.assign(d);
      return true;
    case 'l':
      reply_.kind = MilterReplyKind::kSetSymList;
      if (d.size() < 4) return bad("no stage");
      reply_.index = getU32(d);
      d.remove_prefix(4);
      if (!takeCString(&d, &reply_.text)) return bad("macro list not NUL-terminated");
      return true;
    case 'O':
      reply_.kind = MilterReplyKind::kOptneg;
      if (d.size() < 12) return bad("shorter than 12 octets");
      reply_.version = getU32(d);
      reply_.actions = getU32(d.substr(4));
      reply_.protocol = getU32(d.substr(8));
      return true;
    default:
      reply_.kind = MilterReplyKind::kOther;
      return true;
  }
}

}  // namespace mailgate::filters
