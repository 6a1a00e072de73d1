#include "gateway/core/log.h"

#include "gateway/core/utf8.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <thread>

namespace mailgate::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<int> g_format{static_cast<int>(Format::kJson)};

const char* levelName(Level l) {
  switch (l) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "?";
}

std::atomic<uint64_t> g_dropped{0};

// Where lines go: stderr, or once openFile() has been called, a descriptor of our own
// that keeps its number for the life of the process (dup2 swaps the file behind it).
std::atomic<int> g_out_fd{2};
std::mutex g_file_mu;    // openFile() against filePath()
std::string g_file_path;
int g_file_fd = -1;

// The asynchronous sink. Callers only append under the mutex; the writer takes the
// whole queue at once and writes it with the mutex released.
struct Sink {
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;  // complete lines, in order
  size_t max_bytes = 0;
  uint64_t dropped_here = 0;  // lines dropped since the writer last took the queue
  size_t drop_at = 0;         // offset in `pending` where the first of those was dropped
  bool running = false;       // lines go to the queue (else: written by the caller)
  bool stop = false;
  int fd = 2;
  std::thread thread;
};

Sink& sink() {
  static Sink* s = new Sink;  // never destroyed: usable from atexit and late threads
  return *s;
}

// Writes all of data; false when the fd fails for good.
bool writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {  // a non-blocking fd: wait for room (this is the log thread)
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, 1000);
        continue;
      }
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string format(Level level, std::string_view msg, std::initializer_list<Field> fields);

void writerLoop(Sink& s) {
  std::string batch;
  std::unique_lock lk(s.mu);
  for (;;) {
    s.cv.wait(lk, [&] { return !s.pending.empty() || s.dropped_here > 0 || s.stop; });
    if (s.pending.empty() && s.dropped_here == 0) {  // stopping, and nothing is left
      s.running = false;
      return;
    }
    batch.swap(s.pending);
    const uint64_t dropped = s.dropped_here;
    const size_t at = std::min(s.drop_at, batch.size());
    s.dropped_here = 0;
    const int fd = s.fd;
    const size_t max_bytes = s.max_bytes;
    lk.unlock();
    if (dropped > 0) batch.insert(at, format(Level::kWarn, "log lines dropped", {{"lines", dropped}}));
    if (!writeAll(fd, batch))
      g_dropped.fetch_add(static_cast<uint64_t>(std::count(batch.begin(), batch.end(), '\n')),
                          std::memory_order_relaxed);
    batch.clear();
    if (batch.capacity() > max_bytes + 4096) std::string().swap(batch);
    lk.lock();
  }
}
}  // namespace

void startAsync(int fd, size_t max_bytes) {
  static std::once_flag at_exit;
  std::call_once(at_exit, [] { std::atexit([] { stopAsync(); }); });
  Sink& s = sink();
  std::lock_guard lk(s.mu);
  if (s.running || s.thread.joinable()) return;
  s.fd = fd >= 0 ? fd : g_out_fd.load();
  s.max_bytes = max_bytes;
  s.stop = false;
  s.running = true;
  s.thread = std::thread([&s] { writerLoop(s); });
}

void stopAsync() noexcept {
  Sink& s = sink();
  std::thread t;
  {
    std::lock_guard lk(s.mu);
    if (!s.thread.joinable()) return;
    s.stop = true;
    t = std::move(s.thread);
  }
  s.cv.notify_one();
  t.join();  // the writer has written everything queued and set running = false
  std::lock_guard lk(s.mu);
  s.stop = false;
  s.fd = g_out_fd.load();
  std::string().swap(s.pending);
}

Result<bool> openFile(const std::string& path) {
  std::lock_guard lk(g_file_mu);
  int fd = 2;
  if (!path.empty()) {
    fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
    if (fd < 0) return Error{"log.file " + path + ": " + std::strerror(errno)};
  } else if (g_file_fd < 0) {
    return true;  // stderr it is already
  }
  if (g_file_fd < 0) {
    // The first file: it becomes the output. The writer picks the descriptor up under
    // the sink's mutex; a line being written synchronously still goes to stderr.
    g_file_fd = fd;
    Sink& s = sink();
    std::lock_guard slk(s.mu);
    if (s.fd == g_out_fd.load()) s.fd = fd;
    g_out_fd.store(fd);
  } else {
    // Atomically the new file (or stderr) behind the same number: a write(2) in flight
    // holds its own reference to the old file and ends there.
    while (::dup2(fd, g_file_fd) < 0) {
      if (errno == EINTR || errno == EBUSY) continue;
      const int e = errno;
      if (fd != 2) ::close(fd);
      return Error{"log.file " + path + ": dup2: " + std::strerror(e)};
    }
    if (fd != 2) ::close(fd);
  }
  g_file_path = path;
  return true;
}

std::string filePath() {
  std::lock_guard lk(g_file_mu);
  return g_file_path;
}

uint64_t droppedLines() noexcept { return g_dropped.load(std::memory_order_relaxed); }

void setLevel(Level level) noexcept { g_level.store(static_cast<int>(level)); }
void setFormat(Format format) noexcept { g_format.store(static_cast<int>(format)); }
bool enabled(Level level) noexcept {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

std::string jsonEscape(std::string_view s, size_t max) {
  std::string out;
  bool cut = s.size() > max;
  if (cut) s = s.substr(0, max);
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c >= 0x20 && c < 0x7f) {
          out += static_cast<char>(c);
        } else if (const size_t n = c >= 0x80 ? utf8::sequenceLength(s, i) : 0; n != 0) {
          out.append(s.substr(i, n));  // UTF-8 (SMTPUTF8 addresses) stays readable
          i += n - 1;
        } else {
          char buf[8];  // a control octet, or one that is not UTF-8
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        }
    }
  }
  if (cut) out += "...";
  return out;
}

namespace {
std::string format(Level level, std::string_view msg, std::initializer_list<Field> fields) {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[64];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  std::string line;
  line.reserve(256);
  if (static_cast<Format>(g_format.load()) == Format::kJson) {
    line += "{\"ts\":\"";
    line += ts;
    line += "\",\"level\":\"";
    line += levelName(level);
    line += "\",\"msg\":\"";
    line += jsonEscape(msg, 1024);
    line += '"';
    for (const auto& f : fields) {
      line += ",\"";
      line += f.key;
      line += "\":";
      if (f.quoted) {
        line += '"';
        line += jsonEscape(f.value, 1024);
        line += '"';
      } else {
        line += f.value;
      }
    }
    line += "}\n";
  } else {
    line += ts;
    line += ' ';
    line += levelName(level);
    line += ' ';
    line += jsonEscape(msg, 1024);
    for (const auto& f : fields) {
      line += ' ';
      line += f.key;
      line += '=';
      line += jsonEscape(f.value, 1024);
    }
    line += '\n';
  }
  return line;
}
}  // namespace

void emit(Level level, std::string_view msg, std::initializer_list<Field> fields) {
  std::string line = format(level, msg, fields);
  Sink& s = sink();
  {
    std::lock_guard lk(s.mu);
    if (s.running) {
      if (s.pending.size() + line.size() > s.max_bytes) {
        if (s.dropped_here++ == 0) s.drop_at = s.pending.size();
        g_dropped.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      const bool was_empty = s.pending.empty();
      s.pending += line;
      if (was_empty) s.cv.notify_one();
      return;
    }
  }
  // Synchronous: one write per line so lines from several threads never interleave.
  ssize_t r = ::write(g_out_fd.load(std::memory_order_relaxed), line.data(), line.size());
  (void)r;
}

bool RateLimit::allow() noexcept {
  long now = static_cast<long>(std::time(nullptr));
  long w = window_.load(std::memory_order_relaxed);
  if (w != now && window_.compare_exchange_strong(w, now)) count_.store(0);
  if (count_.fetch_add(1) < per_second_) return true;
  suppressed_.fetch_add(1);
  return false;
}

}  // namespace mailgate::log
