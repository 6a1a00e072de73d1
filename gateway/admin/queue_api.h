#pragma once
// The admin endpoint's exception-queue routes, the pure part: JSON and table forms of
// the entries and the paths.
//   GET    /queue[?format=table][&limit=N]  the entries, the oldest first
//   GET    /queue/ID                        one entry, its recipients and their states
//   POST   /queue/ID/retry                  make it due now and wake the runner
//   DELETE /queue/ID                        delete it (its open recipients are dropped)
#include <string>
#include <string_view>
#include <vector>

#include "gateway/admin/bans_api.h"
#include "gateway/queue/queue_store.h"

namespace mailgate::admin {

inline constexpr size_t kQueueListDefault = 100;
inline constexpr size_t kQueueListMax = 10000;

// One entry; with_rcpts: every recipient with its state and last reply (else counts).
std::string queueEntryJson(const queue::QueueEntry& e, bool with_rcpts);
std::string queueJson(const std::vector<queue::QueueEntry>& entries);
std::string queueTable(const std::vector<queue::QueueEntry>& entries, int64_t now_ms);

// limit (1..kQueueListMax); false and *error on a bad one.
bool parseQueueList(const HttpRequest& req, size_t* limit, std::string* error);

enum class QueueRoute { kNone, kEntry, kRetry, kDelete };
// "/queue/ID", "/queue/ID/retry", "/queue/ID/delete" (the status page's form for
// DELETE) → the route and the ID as written (*id_valid: queue::validQueueId); kNone
// for any other path.
QueueRoute parseQueuePath(std::string_view path, std::string* id, bool* id_valid);

}  // namespace mailgate::admin
