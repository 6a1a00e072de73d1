#include "gateway/core/hostname.h"

#include <unistd.h>

#include <mutex>

namespace mailgate::core {

namespace {
std::mutex g_mu;
std::string g_configured;
}  // namespace

const std::string& systemHostName() {
  static const std::string name = [] {
    char buf[256] = {};
    if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return std::string("localhost");
    return std::string(buf);
  }();
  return name;
}

std::string hostName() {
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_configured.empty()) return g_configured;
  }
  return systemHostName();
}

void setHostName(std::string name) {
  std::lock_guard<std::mutex> g(g_mu);
  g_configured = std::move(name);
}

}  // namespace mailgate::core
