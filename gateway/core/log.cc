#include "gateway/core/log.h"

#include "gateway/core/utf8.h"

#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>

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
}  // namespace

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

void emit(Level level, std::string_view msg, std::initializer_list<Field> fields) {
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
  // One write per line so lines from several threads never interleave.
  ssize_t r = ::write(2, line.data(), line.size());
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
