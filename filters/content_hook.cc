#include "filters/content_hook.h"

#include <exception>

namespace mailgate::filters {

Decision ContentChain::run(const MessageInfo& info, const MessageBody& body) const {
  for (const auto& h : hooks_) {
    Decision d;
    try {
      d = h->inspect(info, body);
    } catch (const std::exception& e) {
      d.action = Action::kTempFail;
      d.reply.clear();
      d.reason = std::string("hook failed: ") + e.what();
    } catch (...) {
      d.action = Action::kTempFail;
      d.reply.clear();
      d.reason = "hook failed";
    }
    if (d.action == Action::kAccept) continue;
    d.hook.assign(h->name());
    // Only a reply of the action's class is passed on: a hook cannot turn a refusal
    // into an acceptance or a temporary failure into a permanent one by its text.
    const char want = d.action == Action::kReject ? '5' : '4';
    if (d.reply.size() < 4 || d.reply[0] != want) {
      d.reply = d.action == Action::kReject ? "554 5.7.1 Message content rejected"
                                            : "451 4.7.1 Message could not be checked, try again later";
    }
    return d;
  }
  return Decision{};
}

}  // namespace mailgate::filters
