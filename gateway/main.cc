// mailgate: the process. Parses the command line, loads the configuration, starts
// one reactor per thread and the worker pool, and turns signals into reload/stop.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "conf/config.h"
#include "gateway/core/log.h"
#include "gateway/io/listener.h"
#include "gateway/io/worker_pool.h"
#include "gateway/session/reactor.h"
#include "gateway/session/runtime.h"

using namespace mailgate;

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: mailgate --config FILE        run in the foreground\n"
               "       mailgate --check-config FILE  validate the configuration\n"
               "       mailgate --init-db FILE       create or migrate the database schema\n"
               "       mailgate --version\n");
}

int checkConfig(const std::string& path) {
  auto r = conf::loadConfigFile(path);
  if (!r.errors.empty()) {
    for (const auto& e : r.errors) std::printf("%s\n", e.format().c_str());
    return 1;
  }
  // Compile what the loader cannot check alone (certificates and keys, passwd-file).
  auto rt = session::Runtime::build(r.config);
  if (!rt) {
    std::printf("%s: %s\n", path.c_str(), rt.error().c_str());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

void applyLog(const conf::Config& c) {
  log::setFormat(c.log.format == conf::LogFormat::kJson ? log::Format::kJson : log::Format::kText);
  switch (c.log.level) {
    case conf::LogLevel::kDebug: log::setLevel(log::Level::kDebug); break;
    case conf::LogLevel::kInfo: log::setLevel(log::Level::kInfo); break;
    case conf::LogLevel::kWarn: log::setLevel(log::Level::kWarn); break;
    case conf::LogLevel::kError: log::setLevel(log::Level::kError); break;
  }
}

void reportErrors(const std::vector<conf::ConfigError>& errors) {
  for (const auto& e : errors) std::fprintf(stderr, "%s\n", e.format().c_str());
}

int run(const std::string& path) {
  auto loaded = conf::loadConfigFile(path);
  if (!loaded.errors.empty()) {
    reportErrors(loaded.errors);
    return 1;
  }
  const conf::Config& cfg = *loaded.config;
  applyLog(cfg);
  for (const auto& l : cfg.listeners) {
    if (l.protocol == conf::Protocol::kSmtp || l.protocol == conf::Protocol::kSubmission) {
      std::fprintf(stderr, "%s:%d:%d: listener %s: protocol smtp/submission is not available in this build\n",
                   path.c_str(), l.line, l.column, l.name.c_str());
      return 1;
    }
    if (l.proxy_protocol) {
      std::fprintf(stderr, "%s:%d:%d: listener %s: proxy_protocol is not available in this build\n", path.c_str(),
                   l.line, l.column, l.name.c_str());
      return 1;
    }
  }
  auto rt = session::Runtime::build(loaded.config);
  if (!rt) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), rt.error().c_str());
    return 1;
  }

  // Signals are taken synchronously by this thread; every other thread blocks them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::vector<std::pair<std::string, io::SockAddr>> addrs;
  for (const auto& l : cfg.listeners)
    for (const auto& a : l.listen) {
      auto sa = io::parseListenAddress(a);
      if (!sa) {
        std::fprintf(stderr, "%s: listener %s: %s\n", path.c_str(), l.name.c_str(), sa.error().c_str());
        return 1;
      }
      addrs.emplace_back(l.name, sa.value());
    }

  unsigned threads = cfg.server.threads ? cfg.server.threads : std::max(1u, std::thread::hardware_concurrency());
  io::WorkerPool workers(cfg.server.workers, 100000);
  std::vector<std::unique_ptr<session::Reactor>> reactors;
  for (unsigned i = 0; i < threads; i++) {
    auto r = std::make_unique<session::Reactor>(i, workers);
    auto ok = r->init(addrs);
    if (!ok) {
      std::fprintf(stderr, "mailgate: cannot start: %s\n", ok.error().c_str());
      return 1;
    }
    reactors.push_back(std::move(r));
  }
  session::publishRuntime(rt.value());
  rt.value()->health->start();
  rt = Error{""};  // drop our reference: the published snapshot owns it

  std::vector<std::thread> ts;
  for (auto& r : reactors) ts.emplace_back([&r] { r->run(); });
  log::info("mailgate started", {{"version", MAILGATE_VERSION}, {"threads", threads}, {"config", path}});

  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo(&set, &si);
    if (sig < 0) continue;
    if (sig == SIGPIPE) continue;
    if (sig == SIGHUP) {
      log::info("reloading configuration", {{"config", path}});
      auto nl = conf::loadConfigFile(path);
      if (!nl.errors.empty()) {
        for (const auto& e : nl.errors) log::error("reload failed, keeping the running configuration", {{"error", e.format()}});
        continue;
      }
      auto nrt = session::Runtime::build(nl.config);
      if (!nrt) {
        log::error("reload failed, keeping the running configuration", {{"error", nrt.error()}});
        continue;
      }
      bool same_listeners = nl.config->listeners.size() == cfg.listeners.size();
      for (size_t i = 0; same_listeners && i < cfg.listeners.size(); i++)
        same_listeners = nl.config->listeners[i].name == cfg.listeners[i].name &&
                         nl.config->listeners[i].listen == cfg.listeners[i].listen;
      if (!same_listeners) log::warn("listener addresses changed: restart to apply them");
      applyLog(*nl.config);
      auto fresh = nrt.value();
      session::publishRuntime(fresh);
      fresh->health->start();
      log::info("configuration reloaded");
      continue;
    }
    log::info("stopping", {{"signal", strsignal(sig)}});
    for (auto& r : reactors) r->requestStop(cfg.server.shutdown_grace);
    break;
  }
  for (auto& t : ts) t.join();
  workers.stop();
  session::publishRuntime(nullptr);
  log::info("mailgate stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("mailgate %s\n", MAILGATE_VERSION);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check-config") == 0) return checkConfig(argv[2]);
  if (argc == 3 && std::strcmp(argv[1], "--config") == 0) return run(argv[2]);
  if (argc == 3 && std::strcmp(argv[1], "--init-db") == 0) {
    std::fprintf(stderr, "mailgate: --init-db needs directory.driver postgres, which this build does not have yet\n");
    return 1;
  }
  usage();
  return 2;
}
