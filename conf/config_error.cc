#include <string>

#include "conf/config.h"

namespace mailgate::conf {

std::string ConfigError::format() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

}  // namespace mailgate::conf
