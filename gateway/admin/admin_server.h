#pragma once
// The admin listener (admin.listen): GET /metrics (Prometheus text format) and
// GET /healthz. A plain blocking server on its own thread: it never touches a
// reactor's ring, only reads counters.
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "gateway/core/result.h"

namespace mailgate::admin {

class AdminServer {
 public:
  // metrics() renders the /metrics body; called on the admin thread.
  AdminServer(std::string listen, std::function<std::string()> metrics);
  ~AdminServer();
  Result<bool> start();
  void stop();

 private:
  void run();
  void serve(int fd);
  std::string listen_;
  std::function<std::string()> metrics_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace mailgate::admin
