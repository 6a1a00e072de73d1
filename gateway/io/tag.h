#pragma once
// io_uring user_data is a tag (operation, side, slot, generation), never a pointer.
// A completion whose generation no longer matches its slot is stale: counted, dropped.
#include <cstdint>

namespace mailgate::io {

enum class Op : uint8_t {
  kAccept = 1,
  kRecv,
  kSend,
  kConnect,
  kLinkTimeout,
  kCancel,
  kTick,
  kWake,
};

struct Tag {
  Op op;
  // Sessions: 0 the client, odd the node (bits 1-7 its incarnation), even from 8 up
  // a filter's connection (gateway/session/aux_connections.h). Accept: the listener
  // socket index.
  uint8_t aux;
  uint32_t slot;  // 24 bits
  uint32_t gen;   // 24 bits

  static constexpr uint32_t kMask24 = 0xffffff;
  uint64_t pack() const noexcept {
    return static_cast<uint64_t>(op) | (static_cast<uint64_t>(aux) << 8) |
           (static_cast<uint64_t>(slot & kMask24) << 16) | (static_cast<uint64_t>(gen & kMask24) << 40);
  }
  static Tag unpack(uint64_t v) noexcept {
    return Tag{static_cast<Op>(v & 0xff), static_cast<uint8_t>((v >> 8) & 0xff),
               static_cast<uint32_t>((v >> 16) & kMask24), static_cast<uint32_t>((v >> 40) & kMask24)};
  }
};

}  // namespace mailgate::io
