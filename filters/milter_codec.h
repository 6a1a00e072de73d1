#pragma once
// The Sendmail milter protocol, version 6 (libmilter's mfdef.h, as Postfix's
// milter8.c speaks it), as a pure codec: no I/O, no clock, no logging.
//
// Every packet, both ways: a 4-octet big-endian length (of what follows), a command
// octet, then the command's data. Strings in the data end with NUL.
//   MTA -> milter: O (option negotiation: version, actions, protocol steps), D (macros
//     for the next command), C (connect), H (helo), M (mail), R (rcpt), L (header),
//     N (end of headers), B (body chunk, at most 65535 octets), E (end of body),
//     A (abort the message), Q (quit).
//   milter -> MTA: c continue, a accept, r reject, t tempfail, d discard,
//     y reply code ("550 5.7.1 text"), s skip (the rest of the body), p progress, and
//     at end of body the changes: h add header, m change header (index, name, value;
//     an empty value deletes), i insert header (index, name, value), b replace body
//     (in chunks), q quarantine (reason); plus the option negotiation's own O reply and
//     l (macros the milter wants at a stage).
// The reply parser accepts any split of its input and bounds a packet's length.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailgate::filters {

constexpr uint32_t kMilterVersion = 6;
constexpr size_t kMilterChunk = 65535;  // MILTER_CHUNK_SIZE: the largest body chunk

// Commands (SMFIC_*).
enum class MilterCommand : char {
  kAbort = 'A',
  kBody = 'B',
  kConnect = 'C',
  kMacro = 'D',
  kBodyEob = 'E',
  kHelo = 'H',
  kHeader = 'L',
  kMail = 'M',
  kEoh = 'N',
  kOptneg = 'O',
  kQuit = 'Q',
  kRcpt = 'R',
  kData = 'T',
};

// Actions the MTA allows (SMFIF_*).
namespace milter_action {
constexpr uint32_t kAddHeaders = 0x01;
constexpr uint32_t kChangeBody = 0x02;
constexpr uint32_t kAddRcpt = 0x04;
constexpr uint32_t kDelRcpt = 0x08;
constexpr uint32_t kChangeHeaders = 0x10;
constexpr uint32_t kQuarantine = 0x20;
constexpr uint32_t kChangeFrom = 0x40;
constexpr uint32_t kAddRcptPar = 0x80;
constexpr uint32_t kSetSymList = 0x100;
}  // namespace milter_action

// Protocol steps (SMFIP_*): commands the milter does not want, replies it will not send.
namespace milter_proto {
constexpr uint32_t kNoConnect = 0x01;
constexpr uint32_t kNoHelo = 0x02;
constexpr uint32_t kNoMail = 0x04;
constexpr uint32_t kNoRcpt = 0x08;
constexpr uint32_t kNoBody = 0x10;
constexpr uint32_t kNoHeaders = 0x20;
constexpr uint32_t kNoEoh = 0x40;
constexpr uint32_t kNrHeader = 0x80;
constexpr uint32_t kNoUnknown = 0x100;
constexpr uint32_t kNoData = 0x200;
constexpr uint32_t kSkip = 0x400;
constexpr uint32_t kRcptRej = 0x800;
constexpr uint32_t kNrConnect = 0x1000;
constexpr uint32_t kNrHelo = 0x2000;
constexpr uint32_t kNrMail = 0x4000;
constexpr uint32_t kNrRcpt = 0x8000;
constexpr uint32_t kNrData = 0x10000;
constexpr uint32_t kNrUnknown = 0x20000;
constexpr uint32_t kNrEoh = 0x40000;
constexpr uint32_t kNrBody = 0x80000;
constexpr uint32_t kHeaderLeadingSpace = 0x100000;
}  // namespace milter_proto

// Macro stages of SETSYMLIST (SMFIM_*).
enum class MilterMacroStage : uint32_t { kConnect = 0, kHelo, kMail, kRcpt, kData, kEom, kEoh };

// What the gateway offers: every action it carries out, every step a milter may leave out.
constexpr uint32_t kMilterOfferedActions = milter_action::kAddHeaders | milter_action::kChangeBody |
                                           milter_action::kChangeHeaders | milter_action::kQuarantine |
                                           milter_action::kSetSymList;
constexpr uint32_t kMilterOfferedProtocol =
    milter_proto::kNoConnect | milter_proto::kNoHelo | milter_proto::kNoMail | milter_proto::kNoRcpt |
    milter_proto::kNoBody | milter_proto::kNoHeaders | milter_proto::kNoEoh | milter_proto::kNrHeader |
    milter_proto::kNoUnknown | milter_proto::kNoData | milter_proto::kSkip | milter_proto::kNrConnect |
    milter_proto::kNrHelo | milter_proto::kNrMail | milter_proto::kNrRcpt | milter_proto::kNrData |
    milter_proto::kNrUnknown | milter_proto::kNrEoh | milter_proto::kNrBody |
    milter_proto::kHeaderLeadingSpace;

using MilterMacros = std::vector<std::pair<std::string, std::string>>;

// Request builders: each appends one packet to *out.
void milterAppendPacket(MilterCommand cmd, std::string_view data, std::string* out);
void milterOptneg(uint32_t actions, uint32_t protocol, std::string* out);
// Macros for the command `before` (skipped when `macros` is empty).
void milterMacros(MilterCommand before, const MilterMacros& macros, std::string* out);
// family: '4', '6' (address and port follow) or 'U' (unknown: nothing follows).
void milterConnect(std::string_view hostname, char family, uint16_t port, std::string_view address,
                   std::string* out);
void milterHelo(std::string_view helo, std::string* out);
// MAIL / RCPT: the path ("<a@b>") and its ESMTP parameters, each NUL-terminated.
void milterMail(const std::vector<std::string>& args, std::string* out);
void milterRcpt(const std::vector<std::string>& args, std::string* out);
void milterHeader(std::string_view name, std::string_view value, std::string* out);
void milterEoh(std::string* out);
// One or more BODY packets of at most kMilterChunk octets each.
void milterBody(std::string_view chunk, std::string* out);
void milterEob(std::string* out);
void milterAbort(std::string* out);
void milterQuit(std::string* out);

enum class MilterReplyKind : uint8_t {
  kContinue,      // c
  kAccept,        // a
  kReject,        // r
  kTempfail,      // t
  kDiscard,       // d
  kReplyCode,     // y: text = "550 5.7.1 text"
  kSkip,          // s
  kProgress,      // p
  kAddHeader,     // h: name, value
  kChangeHeader,  // m: index, name, value ("" = delete)
  kInsertHeader,  // i: index, name, value
  kReplaceBody,   // b: value = a chunk of the new body
  kQuarantine,    // q: text = the reason
  kOptneg,        // O: version, actions, protocol
  kSetSymList,    // l: index = the macro stage, text = the macro names
  kOther,         // another milter reply this MTA did not offer (e, +, -, 2, ...): command
};

struct MilterReply {
  MilterReplyKind kind = MilterReplyKind::kContinue;
  char command = 0;
  uint32_t index = 0;
  std::string name;
  std::string value;
  std::string text;
  uint32_t version = 0, actions = 0, protocol = 0;
};

// Whether the reply ends the exchange of a command (the rest come before the final one).
constexpr bool milterFinal(MilterReplyKind k) {
  return k == MilterReplyKind::kContinue || k == MilterReplyKind::kAccept || k == MilterReplyKind::kReject ||
         k == MilterReplyKind::kTempfail || k == MilterReplyKind::kDiscard ||
         k == MilterReplyKind::kReplyCode || k == MilterReplyKind::kSkip || k == MilterReplyKind::kOptneg;
}

enum class MilterStatus : uint8_t {
  kNeedMore,  // no complete packet yet
  kReply,     // reply() holds one packet; feed on for the next
  kError,     // a malformed packet, or one over the bound (errorText()); final
};

struct MilterFeed {
  MilterStatus status = MilterStatus::kNeedMore;
  size_t consumed = 0;
};

class MilterReplyParser {
 public:
  static constexpr size_t kDefaultMaxPacket = 1u << 20;
  explicit MilterReplyParser(size_t max_packet = kDefaultMaxPacket) : max_(max_packet) {}

  // Consumes bytes up to the end of one packet: kReply stops there (reply() is valid
  // until the next feed), so a caller loops until everything is consumed.
  MilterFeed feed(std::string_view bytes) noexcept;
  const MilterReply& reply() const { return reply_; }
  std::string_view errorText() const { return error_; }
  // Octets of a packet started and not finished (a connection that ends here cut it).
  bool midPacket() const { return !head_.empty() || need_ > 0; }

 private:
  bool decode() noexcept;
  MilterFeed fail(std::string why, size_t consumed) noexcept;

  size_t max_;
  std::string head_;  // the length octets gathered so far
  std::string data_;  // the packet (command octet and data)
  size_t need_ = 0;   // octets of the packet still to come (0: reading a length)
  MilterReply reply_;
  std::string error_;
  bool failed_ = false;
};

}  // namespace mailgate::filters
