#include "filters/connection.h"

namespace mailgate::filters {

std::string_view connectionEndName(ConnectionEnd e) {
  switch (e) {
    case ConnectionEnd::kClosed:
      return "closed";
    case ConnectionEnd::kConnectFailed:
      return "connect";
    case ConnectionEnd::kConnectTimeout:
      return "connect_timeout";
    case ConnectionEnd::kError:
      return "error";
  }
  return "?";
}

}  // namespace mailgate::filters
