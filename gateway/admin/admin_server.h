#pragma once
// The admin listener (admin.listen): GET /metrics (Prometheus text format),
// GET /healthz, the status page (gateway/admin/status_page.h: GET /status,
// GET /status.json, GET / redirects), the bans (gateway/admin/bans_api.h: list,
// ban, lift), the quarantine (gateway/admin/quarantine_api.h: list, show, release,
// delete), the exception queue (gateway/admin/queue_api.h: list, show, retry,
// delete) and the backends' drain:
//   POST /backends/drain?name=NODE&state=drain|active
// With the postgres directory (its nodes table) a drain is written to the table and
// reaches every gateway through the route NOTIFY; otherwise it is an override of
// this process (kept across reloads, lost at restart).
//
// A plain blocking server on its own thread: it never touches a reactor's ring, only
// reads counters and the policy's tables. GET never changes state. Every other
// method needs the token of admin.token_file (gateway/admin/admin_auth.h): as
// `Authorization: Bearer <token>`, or the form field `token` (the status page).
// Without a token file the listener is read-only (403); a missing or wrong token is
// 401 with `WWW-Authenticate: Bearer`. Bind it to loopback or a management network.
#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "gateway/admin/bans_api.h"
#include "gateway/core/result.h"

namespace mailgate::admin {

// The policy's lines for /metrics (bans in force, the cluster sync, PolicyStats).
void renderPolicyMetrics(std::string& out);
// The quarantine's lines for /metrics (mailgate_quarantine_*).
void renderQuarantineMetrics(std::string& out);

// Reads a token file: its first line (admin_auth.h's tokenFromFileContent). Empty
// path = no token. An error when the file cannot be read or holds no token.
Result<std::string> readTokenFile(const std::string& path);

class AdminServer {
 public:
  // metrics() renders the /metrics body; called on the admin thread. token_file:
  // admin.token_file (empty = read-only).
  AdminServer(std::string listen, std::function<std::string()> metrics, std::string token_file = {});
  ~AdminServer();
  // Reads the token file, then opens the listener; with serve, starts answering at
  // once, else when serve() is called (connections wait in the backlog until then).
  Result<bool> start(bool serve = true);
  void serve();
  void stop();
  // Reads the token file again (SIGHUP); a file that cannot be read leaves the
  // listener read-only until the next reload, with an error in the log.
  void reloadToken(const std::string& token_file);

 private:
  void run();
  void serve(int fd);
  std::string bans(const HttpRequest& req);
  std::string quarantine(const HttpRequest& req);
  std::string queueRoutes(const HttpRequest& req);
  std::string drain(const HttpRequest& req);
  std::string token() const;
  std::string listen_;
  std::function<std::string()> metrics_;
  std::string token_file_;
  mutable std::mutex token_mu_;
  std::string token_;  // guarded by token_mu_; empty = read-only
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace mailgate::admin
