#include "gateway/session/runtime.h"

#include <mutex>

#include "auth/passwd_file.h"
#include "gateway/core/log.h"

namespace mailgate::session {

namespace {
std::mutex g_mu;
std::shared_ptr<Runtime> g_runtime;
}  // namespace

std::shared_ptr<Runtime> currentRuntime() {
  std::lock_guard<std::mutex> g(g_mu);
  return g_runtime;
}

void publishRuntime(std::shared_ptr<Runtime> rt) {
  std::shared_ptr<Runtime> old;
  {
    std::lock_guard<std::mutex> g(g_mu);
    old = std::move(g_runtime);
    g_runtime = std::move(rt);
  }
  // The old snapshot's health checker stops now; sessions keep the rest alive.
  if (old && old->health) old->health->stop();
}

Runtime::~Runtime() {
  if (health) health->stop();
}

const conf::ListenerConfig* Runtime::listener(const std::string& name) const {
  for (const auto& l : config->listeners)
    if (l.name == name) return &l;
  return nullptr;
}

Result<std::shared_ptr<Runtime>> Runtime::build(std::shared_ptr<const conf::Config> config) {
  auto rt = std::make_shared<Runtime>();
  rt->config = config;
  if (!config->tls.certificates.empty()) {
    auto st = tls::ServerTls::build(config->tls);
    if (!st) return Error{"tls: " + st.error()};
    rt->server_tls = std::move(st.value());
  }
  for (const auto& b : config->backends) {
    if (b.tls == conf::TlsMode::kNone) continue;
    auto ct = tls::ClientTls::build(b);
    if (!ct) return Error{"backend " + b.name + ": " + ct.error()};
    rt->backend_tls[b.name] = std::move(ct.value());
  }
  if (config->directory.driver == "file") {
    auto pf = std::make_shared<auth::PasswdFile>();
    auto report = pf->load(config->directory.file.users);
    if (!report.loaded) return Error{"directory.file.users: cannot read " + config->directory.file.users};
    for (const auto& p : report.problems) log::warn("passwd-file problem", {{"problem", p}});
    log::info("directory loaded", {{"driver", "file"}, {"users", report.users}});
    rt->directory = std::move(pf);
  } else {
    return Error{"directory.driver " + config->directory.driver + " is not supported"};
  }
  rt->router = std::make_unique<routing::Router>(config);
  rt->health = std::make_unique<routing::HealthChecker>(*rt->router);
  return rt;
}

}  // namespace mailgate::session
