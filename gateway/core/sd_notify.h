#pragma once
// The service manager's readiness protocol (sd_notify(3)), spoken directly: one
// datagram of newline-separated VAR=value lines to the AF_UNIX socket named in
// $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). It is a
// documented, stable interface of a few lines, so the gateway does not link
// libsystemd for it and runs unchanged where there is no systemd at all.
//
// The socket is opened and connected once, at start, while the process still has
// the identity it was started with: the notify socket stays reachable after the
// privilege drop even when its directory is not.
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::sd {

class Notifier {
 public:
  // Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID and unsets them (so that
  // children do not inherit them). Without NOTIFY_SOCKET every call is a no-op.
  static Notifier fromEnvironment();
  Notifier() = default;
  Notifier(Notifier&& o) noexcept;
  Notifier& operator=(Notifier&& o) noexcept;
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;
  ~Notifier();

  bool enabled() const { return fd_ >= 0; }
  // Why the socket could not be used ("" when it can, or when none was given).
  const std::string& problem() const { return problem_; }
  // Sends "A=1\nB=2" as one datagram; false when disabled or the send failed.
  bool send(std::string_view state);
  // The watchdog interval the manager asked for; zero when none (WATCHDOG_USEC unset,
  // or WATCHDOG_PID names another process).
  std::chrono::microseconds watchdog() const { return watchdog_; }

  // Parses $NOTIFY_SOCKET's value into a sockaddr_un (path or abstract); "" = ok.
  static std::string parseAddress(std::string_view value, void* sockaddr_un_out, unsigned* len_out);

 private:
  int fd_ = -1;
  std::string problem_;
  std::chrono::microseconds watchdog_{0};
};

// The "STATUS=" value: one line, printable.
std::string statusLine(std::string_view text);

// Whether every reactor has ticked within `stall_ms` of now_ms (steady clock, ms).
// A reactor that stopped ticking (a stuck thread, a loop that ended) makes the
// watchdog pings stop, so that the service manager restarts the process.
bool allAlive(const std::vector<uint64_t>& heartbeats_ms, uint64_t now_ms, uint64_t stall_ms);

}  // namespace mailgate::sd
