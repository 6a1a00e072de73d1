#pragma once
// Connections a filter opens to an outside service (a scanner daemon). The session
// owns them, drives them on its reactor's ring (connect with a timeout, one send in
// flight, receives into the reactor's buffer ring, close by cancellation) and calls
// the filter back on the reactor thread. A session has at most kMaxConnections of
// them open (or still closing) at a time, besides its client and node connections.
//
// Callbacks never run inside open(), write() or close(); none runs after close(id)
// or after the session started to close. A handler may call open(), write() and
// close() from its callbacks.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace mailgate::filters {

using ConnectionId = uint32_t;  // 0 = none

// How a connection ended (the failure vocabulary of outside dependencies).
enum class ConnectionEnd : uint8_t {
  kClosed,          // the peer closed the connection
  kConnectFailed,   // refused, unreachable, no such socket
  kConnectTimeout,  // not connected within the timeout
  kError,           // a receive or send error once connected
};
std::string_view connectionEndName(ConnectionEnd e);

class ConnectionHandler {
 public:
  virtual ~ConnectionHandler() = default;
  virtual void onConnected(ConnectionId id) = 0;
  // Bytes from the peer (valid for the length of the call).
  virtual void onData(ConnectionId id, std::string_view bytes) = 0;
  // Everything written so far has been sent.
  virtual void onDrained(ConnectionId /*id*/) {}
  // The connection is over; id is no longer valid.
  virtual void onClosed(ConnectionId id, ConnectionEnd end, std::string_view detail) = 0;
};

class ConnectionHost {
 public:
  static constexpr unsigned kMaxConnections = 4;

  virtual ~ConnectionHost() = default;
  // Starts connecting to `address` ("unix:/path", "tcp:IPv4:port", "tcp:[IPv6]:port";
  // numeric addresses only: nothing blocks the reactor). onConnected() or onClosed()
  // follows. Returns 0 and says why in *error when no attempt could start (bad
  // address, every connection in use, no socket).
  virtual ConnectionId open(std::string_view address, std::chrono::milliseconds timeout,
                            ConnectionHandler* handler, std::string* error) = 0;
  // Queues bytes (also while connecting); false when id is not open.
  virtual bool write(ConnectionId id, std::string_view bytes) = 0;
  // Bytes written and not yet sent.
  virtual size_t queued(ConnectionId id) const = 0;
  // Cancels what is in flight and closes; no callback for id follows.
  virtual void close(ConnectionId id) = 0;
  // A thread-safe function that runs fn on the session's reactor, or drops it if the
  // session has ended by then. It may be kept (and called) after the session is gone.
  virtual std::function<void(std::function<void()>)> poster() = 0;
};

}  // namespace mailgate::filters
