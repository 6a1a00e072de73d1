#pragma once
// Logging to stderr or to log.file, one line per event, JSON or text (log.format).
// Client-supplied text must go through jsonEscape()/truncated before logging.
//
// Until startAsync() (and after stopAsync()) a line is one write(2) by the caller: for
// start-up errors and the command-line tools. While the sink runs, a call formats the
// line and queues it (bounded in bytes) for one log thread, so a slow disk or a stalled
// reader of stderr never blocks a reactor; when the queue is full the line is dropped
// and counted, and the writer says how many when it catches up.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "gateway/core/result.h"

namespace mailgate::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class Format { kJson, kText };

void setLevel(Level level) noexcept;
void setFormat(Format format) noexcept;
bool enabled(Level level) noexcept;

// A field value is either a string (escaped) or a raw number.
struct Field {
  std::string_view key;
  std::string value;
  bool quoted = true;
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v ? v : "") {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename N>
  requires std::is_arithmetic_v<N> Field(std::string_view k, N n)
      : key(k), value(std::to_string(n)), quoted(false) {}
};

// Starts the log thread writing to fd (-1: the output, stderr or the file of openFile());
// max_bytes bounds the queue.
void startAsync(int fd = -1, size_t max_bytes = size_t{4} << 20);
// Writes out every queued line, stops the thread; later lines are written synchronously
// to stderr again. Also run at exit(). Safe to call when the sink is not running.
void stopAsync() noexcept;
// Sends every line from now on to `path` (appended, created 0640 if missing) instead of
// stderr. Called again (SIGUSR1 after logrotate moved the file, SIGHUP), it opens the
// path afresh and puts the new file in the place of the old one with dup2(2): a line
// being written goes whole to one of the two files, none is lost, and no thread ever
// writes to a closed descriptor. An error (the file cannot be opened) keeps the
// current output. An empty path goes back to stderr.
// Not for concurrent use by several threads (main's signal loop calls it).
Result<bool> openFile(const std::string& path);
// The path given to openFile() ("" = stderr).
std::string filePath();

// Lines dropped because the queue was full or the sink's fd failed (for /metrics).
uint64_t droppedLines() noexcept;

// Emits one line: {"ts":...,"level":...,"msg":...,fields...}
void emit(Level level, std::string_view msg, std::initializer_list<Field> fields = {});

inline void debug(std::string_view m, std::initializer_list<Field> f = {}) {
  if (enabled(Level::kDebug)) emit(Level::kDebug, m, f);
}
inline void info(std::string_view m, std::initializer_list<Field> f = {}) {
  if (enabled(Level::kInfo)) emit(Level::kInfo, m, f);
}
inline void warn(std::string_view m, std::initializer_list<Field> f = {}) {
  if (enabled(Level::kWarn)) emit(Level::kWarn, m, f);
}
inline void error(std::string_view m, std::initializer_list<Field> f = {}) { emit(Level::kError, m, f); }

// Escapes for a JSON string body and truncates client text to max bytes: well-formed
// UTF-8 passes as it is; control octets and octets that are not UTF-8 become \u00XX.
std::string jsonEscape(std::string_view s, size_t max = 256);

// Rate limiter for client-triggerable log lines: at most `per_second` lines per
// second per limiter; the number suppressed is reported on the next line.
class RateLimit {
 public:
  explicit RateLimit(unsigned per_second) : per_second_(per_second) {}
  bool allow() noexcept;
  unsigned long suppressed() noexcept { return suppressed_.exchange(0); }

 private:
  unsigned per_second_;
  std::atomic<long> window_{0};
  std::atomic<unsigned> count_{0};
  std::atomic<unsigned long> suppressed_{0};
};

}  // namespace mailgate::log
