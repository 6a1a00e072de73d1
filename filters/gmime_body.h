#pragma once
// A read-only, seekable GMimeStream over a spooled message (MessageBody), for the
// filters that parse messages with GMime (mime_meta, dlp). The parser reads it a
// window at a time, and the parts' contents stay substreams of it (the parser's
// persist_stream mode), so a message is never copied whole. Internal to filters/:
// GMime types show here, and GMime is linked privately to mailgate_filters.
#include <gmime/gmime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "filters/message_body.h"

namespace mailgate::filters {

// The octets a parse may read, fetched from the body a window at a time. Shared by
// the stream the parser reads and the substreams GMime makes for part contents; owned
// by one call, and it must outlive every stream made over it.
struct GmimeBodySource {
  static constexpr size_t kWindow = 64 * 1024;

  const MessageBody* body = nullptr;
  uint64_t limit = 0;  // octets readable: min(size, max_bytes)
  std::string window;  // body octets [window_off, window_off + window.size())
  uint64_t window_off = 0;
  bool failed = false;  // sticky: the parse is abandoned, error says why
  std::string error;
};

// g_mime_init() and the stream's type, once per process; thread-safe.
void gmimeInitOnce();

// A new stream (one reference) over src's octets [start, end).
GMimeStream* newGmimeBodyStream(GmimeBodySource* src, gint64 start, gint64 end);

struct GObjectUnref {
  void operator()(gpointer p) const { g_object_unref(p); }
};
template <typename T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

template <typename T>
bool gIsA(T* obj, GType type) {
  return obj != nullptr && g_type_check_instance_is_a(reinterpret_cast<GTypeInstance*>(obj), type);
}

}  // namespace mailgate::filters
