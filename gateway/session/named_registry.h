#pragma once
// A process-wide table of counters kept by name (a listener, a backend, a scanner):
// an entry is made on first use and never freed, so that reactors and filters can
// keep a pointer to it without a lock, and a reload that drops the name leaves its
// counts in place. The lock is taken only to find or list entries.
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace mailgate::session {

// T is constructible from its name (std::string) and has a `name` member.
template <typename T>
class NamedRegistry {
 public:
  // The one registry of T (never destroyed: reactors may outlive statics).
  static NamedRegistry& instance() {
    static NamedRegistry* r = new NamedRegistry;
    return *r;
  }
  // The entry for name, made on first use; the pointer stays valid for the process.
  T* get(std::string_view name) {
    std::lock_guard lk(mu_);
    for (T& e : entries_)
      if (e.name == name) return &e;
    return &entries_.emplace_back(std::string(name));
  }
  // Every entry made so far, in the order they were made.
  std::vector<const T*> all() {
    std::lock_guard lk(mu_);
    std::vector<const T*> out;
    out.reserve(entries_.size());
    for (const T& e : entries_) out.push_back(&e);
    return out;
  }

 private:
  std::mutex mu_;
  std::deque<T> entries_;  // deque: addresses stay valid as it grows
};

}  // namespace mailgate::session
