#pragma once
// The admin listener (admin.listen): GET /metrics (Prometheus text format),
// GET /healthz, the bans (gateway/admin/bans_api.h: list, ban, lift) and the
// quarantine (gateway/admin/quarantine_api.h: list, show, release, delete). A plain
// blocking server on its own thread: it never touches a reactor's ring, only reads
// counters and the policy's ban table. No authentication: bind it to loopback (or a
// management network).
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "gateway/core/result.h"

namespace mailgate::admin {

// The policy's lines for /metrics (bans in force, the cluster sync, PolicyStats).
void renderPolicyMetrics(std::string& out);
// The quarantine's lines for /metrics (mailgate_quarantine_*).
void renderQuarantineMetrics(std::string& out);

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
  std::string bans(const std::string& request_line);
  std::string quarantine(const std::string& request_line);
  std::string listen_;
  std::function<std::string()> metrics_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace mailgate::admin
