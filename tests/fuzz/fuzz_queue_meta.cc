// libFuzzer target for the queue entry codec (gateway/queue/queue_store.h).
// Invariants: decodeQueueMeta never crashes; what it accepts has a valid queue id and
// at least one recipient; encoding an accepted entry gives a text that decodes to the
// same entry and encodes to the same text again (one canonical form).
#include <cstdint>
#include <string>
#include <string_view>

#include "gateway/queue/queue_store.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using mailgate::queue::decodeQueueMeta;
using mailgate::queue::encodeQueueMeta;
using mailgate::queue::QueueEntry;
using mailgate::queue::validQueueId;

bool same(const QueueEntry& a, const QueueEntry& b) {
  if (a.rcpts.size() != b.rcpts.size()) return false;
  for (size_t i = 0; i < a.rcpts.size(); ++i) {
    if (a.rcpts[i].addr != b.rcpts[i].addr || a.rcpts[i].state != b.rcpts[i].state ||
        a.rcpts[i].reply != b.rcpts[i].reply || a.rcpts[i].updated_ms != b.rcpts[i].updated_ms)
      return false;
  }
  return a.id == b.id && a.created_ms == b.created_ms && a.next_ms == b.next_ms && a.attempts == b.attempts &&
         a.mail_from == b.mail_from && a.client_ip == b.client_ip && a.helo == b.helo && a.user == b.user &&
         a.listener == b.listener && a.session_id == b.session_id && a.message_id == b.message_id &&
         a.smtputf8 == b.smtputf8 && a.body_8bit == b.body_8bit && a.dsn == b.dsn && a.size == b.size &&
         a.lease_owner == b.lease_owner && a.lease_until_ms == b.lease_until_ms;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  QueueEntry e;
  if (!decodeQueueMeta(text, &e)) return 0;
  FUZZ_CHECK(validQueueId(e.id));
  FUZZ_CHECK(!e.rcpts.empty());
  for (const auto& r : e.rcpts) FUZZ_CHECK(!r.addr.empty());
  const std::string enc = encodeQueueMeta(e);
  QueueEntry back;
  FUZZ_CHECK(decodeQueueMeta(enc, &back));
  FUZZ_CHECK(same(e, back));
  FUZZ_CHECK(encodeQueueMeta(back) == enc);
  return 0;
}
