#pragma once
// The content-hook point of the SMTP path. When a message is complete and spooled,
// and before it goes to a storage node, every hook of the chain sees it in order
// (antivirus, DLP, milter); the first that does not accept decides the client's
// reply, and the message goes nowhere. Hooks are blocking and run on the worker
// pool while the session waits; an exception from a hook is a temporary failure,
// never an acceptance. The chain comes from the configuration's `hooks` section,
// which defines no hook in this version: the chain is empty and messages pass.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::filters {

// Read access to the spooled message (Received: header included, unstuffed, CRLF).
class MessageBody {
 public:
  virtual ~MessageBody() = default;
  virtual uint64_t size() const = 0;
  // Up to n octets at off into *out (replacing it); false on an I/O error.
  virtual bool read(uint64_t off, size_t n, std::string* out) const = 0;
};

struct MessageInfo {
  std::string session_id;
  std::string client_ip;
  std::string helo;
  std::string user;       // authenticated user (submission), else empty
  std::string mail_from;  // path as sent, "<...>"
  std::vector<std::string> rcpts;
  bool tls = false;
};

enum class Action { kAccept, kReject, kTempFail };

struct Decision {
  Action action = Action::kAccept;
  std::string reply;   // the client's reply ("554 5.7.1 ..."); empty = the default for the action
  std::string reason;  // for the log
  std::string hook;    // which hook decided (set by the chain)
};

class ContentHook {
 public:
  virtual ~ContentHook() = default;
  virtual std::string_view name() const = 0;
  // Thread-safe; blocking.
  virtual Decision inspect(const MessageInfo& info, const MessageBody& body) = 0;
};

class ContentChain {
 public:
  void add(std::unique_ptr<ContentHook> hook) { hooks_.push_back(std::move(hook)); }
  bool empty() const { return hooks_.empty(); }
  size_t size() const { return hooks_.size(); }
  // The first decision that is not kAccept, with its reply filled in; kAccept if all pass.
  Decision run(const MessageInfo& info, const MessageBody& body) const;

 private:
  std::vector<std::unique_ptr<ContentHook>> hooks_;
};

}  // namespace mailgate::filters
