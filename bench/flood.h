#pragma once
// Connection flood for the benchmark (mailgate-load flood): connections from one
// source address (bound with bind(), e.g. 127.0.0.2, so that the target can refuse
// that address alone), `concurrency` of them in flight, each: connect, read until
// the first line or EOF, close. Stops after `count` connections or `duration`
// seconds, whichever comes first. The target is expected to refuse every one of
// them (a refusal line and close, or a bare close); a connection that gets a line
// other than a refusal counts as `accepted` (the target did not refuse it).
#include <cstdint>
#include <string>

namespace mailgate::bench {

struct FloodParams {
  std::string host = "127.0.0.1";
  uint16_t port = 143;
  std::string source = "127.0.0.2";  // bound before connect()
  unsigned count = 20000;            // connections at most
  unsigned concurrency = 16;         // connections in flight
  double duration = 20.0;            // seconds at most
  double timeout = 5.0;              // a connection with no line and no EOF by then fails
  std::string label;
};

// Prints one JSON line on stdout; returns the process exit code (0: no failures).
int runFlood(const FloodParams& params);

}  // namespace mailgate::bench
