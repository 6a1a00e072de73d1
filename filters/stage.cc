#include "filters/stage.h"

namespace mailgate::filters {

std::string_view stageName(Stage s) {
  switch (s) {
    case Stage::kConnect:
      return "connect";
    case Stage::kHelo:
      return "helo";
    case Stage::kAuth:
      return "auth";
    case Stage::kMail:
      return "mail";
    case Stage::kRcpt:
      return "rcpt";
    case Stage::kData:
      return "data";
    case Stage::kClose:
      return "close";
  }
  return "?";
}

bool parseStage(std::string_view name, Stage* out) {
  for (unsigned i = 0; i < kStageCount; i++) {
    const Stage s = static_cast<Stage>(i);
    if (stageName(s) == name) {
      *out = s;
      return true;
    }
  }
  return false;
}

}  // namespace mailgate::filters
