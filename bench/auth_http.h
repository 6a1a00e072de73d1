#pragma once
// A minimal nginx mail `auth_http` responder for the benchmark: single-threaded
// epoll, one request per connection (nginx speaks HTTP/1.0 and closes). It checks
// Auth-Pass against one common password (users are not checked: every user exists)
// and answers Auth-Status: OK with the one backend, else "Invalid login". With
// accept_none, a request with Auth-Method: none (nginx's SMTP proxy with
// `smtp_auth none`, which sends no password) is answered OK as well.
#include <cstdint>
#include <string>

namespace mailgate::bench {

struct AuthHttpParams {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  std::string backend_host = "127.0.0.1";
  uint16_t backend_port = 0;
  std::string password;
  bool accept_none = false;
};

// Runs until SIGTERM/SIGINT. Returns the process exit code.
int runAuthHttp(const AuthHttpParams& params);

}  // namespace mailgate::bench
