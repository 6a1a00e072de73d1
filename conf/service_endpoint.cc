// Addresses of outside services (scanner daemons): "unix:/path" or "tcp:HOST:PORT"
// with a numeric host ("tcp:127.0.0.1:3310", "tcp:[::1]:3310"). Numeric only: the
// session connects on its reactor, where nothing may wait for DNS. Syntax only.
#include <sys/un.h>

#include <string>
#include <string_view>

#include "conf/config.h"

namespace mailgate::conf {

bool parseServiceEndpoint(std::string_view text, ServiceEndpoint* out, std::string* error) {
  auto fail = [error](std::string message) {
    if (error) *error = std::move(message);
    return false;
  };
  if (text.substr(0, 5) == "unix:") {
    const std::string_view path = text.substr(5);
    if (path.empty() || path.front() != '/') return fail("a unix socket path must be absolute (unix:/path)");
    if (path.size() >= sizeof(sockaddr_un::sun_path))
      return fail("the unix socket path is longer than " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                  " characters");
    if (path.find('\0') != std::string_view::npos) return fail("the unix socket path contains a NUL byte");
    out->unix_socket = true;
    out->path = std::string(path);
    out->host.clear();
    out->port = 0;
    return true;
  }
  if (text.substr(0, 4) == "tcp:") {
    ListenAddress a;
    std::string why;
    if (!parseListenAddress(std::string(text.substr(4)), &a, &why)) return fail(why);
    if (a.any()) return fail("a service address needs a host (tcp:127.0.0.1:PORT), not *");
    out->unix_socket = false;
    out->path.clear();
    out->host = std::move(a.host);
    out->port = a.port;
    return true;
  }
  return fail("expected unix:/path or tcp:HOST:PORT");
}

}  // namespace mailgate::conf
