#include "filters/gmime_body.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

namespace mailgate::filters {
namespace {

// A read-only, seekable GMimeStream over a GmimeBodySource (a GObject subclass, registered by
// hand: GLib's type macros are C casts). Its bounds are always set, so a substream
// is the same class with narrower bounds.
struct BodyStream {
  GMimeStream parent;
  GmimeBodySource* src;
};

struct BodyStreamClass {
  GMimeStreamClass parent_class;
};

GType g_body_stream_type = 0;
std::once_flag g_init_once;

BodyStream* asBody(GMimeStream* s) { return reinterpret_cast<BodyStream*>(s); }

GMimeStream* newBodyStreamImpl(GmimeBodySource* src, gint64 start, gint64 end) {
  auto* s = static_cast<BodyStream*>(g_object_new(g_body_stream_type, nullptr));
  s->src = src;
  g_mime_stream_construct(&s->parent, start, end);
  return &s->parent;
}

// Makes the window hold the octet at pos; false (and the error noted) on a failed or
// empty read. Nothing may throw through GMime's C frames.
bool fillWindow(GmimeBodySource* src, uint64_t pos) noexcept {
  if (pos >= src->window_off && pos - src->window_off < src->window.size()) return true;
  const uint64_t want = std::min<uint64_t>(GmimeBodySource::kWindow, src->limit - pos);
  const char* what = nullptr;
  try {
    if (!src->body->read(pos, static_cast<size_t>(want), &src->window)) {
      what = "cannot read the message at offset ";
    } else if (src->window.empty()) {
      what = "the message ends early at offset ";
    }
  } catch (...) {
    what = "cannot read the message at offset ";
  }
  if (what == nullptr) {
    src->window_off = pos;
    return true;
  }
  src->window.clear();
  src->failed = true;
  try {
    src->error = what + std::to_string(pos);
  } catch (...) {
  }
  return false;
}

// Fills buf as far as the bounds allow, however short the body's reads are, so that
// GMime sees the same reads whatever the body's chunking.
ssize_t streamRead(GMimeStream* s, char* buf, size_t len) {
  GmimeBodySource* src = asBody(s)->src;
  if (src->failed) return -1;
  if (s->position < s->bound_start || s->position >= s->bound_end) return 0;
  const size_t total =
      static_cast<size_t>(std::min<uint64_t>(len, static_cast<uint64_t>(s->bound_end - s->position)));
  size_t done = 0;
  while (done < total) {
    const auto pos = static_cast<uint64_t>(s->position);
    if (!fillWindow(src, pos)) return -1;
    const uint64_t avail = src->window.size() - (pos - src->window_off);
    const size_t n = static_cast<size_t>(std::min<uint64_t>(total - done, avail));
    std::memcpy(buf + done, src->window.data() + (pos - src->window_off), n);
    done += n;
    s->position += static_cast<gint64>(n);
  }
  return static_cast<ssize_t>(done);
}

ssize_t streamWrite(GMimeStream*, const char*, size_t) {
  errno = EBADF;
  return -1;
}

int streamFlush(GMimeStream*) { return 0; }
int streamClose(GMimeStream*) { return 0; }
gboolean streamEos(GMimeStream* s) { return s->position >= s->bound_end ? TRUE : FALSE; }

int streamReset(GMimeStream* s) {
  s->position = s->bound_start;
  return 0;
}

gint64 streamSeek(GMimeStream* s, gint64 offset, GMimeSeekWhence whence) {
  gint64 real = 0;
  switch (whence) {
    case GMIME_STREAM_SEEK_SET:
      real = offset;
      break;
    case GMIME_STREAM_SEEK_CUR:
      real = s->position + offset;
      break;
    case GMIME_STREAM_SEEK_END:
      real = s->bound_end + offset;
      break;
  }
  if (real < s->bound_start || real > s->bound_end) {
    errno = EINVAL;
    return -1;
  }
  s->position = real;
  return real;
}

gint64 streamTell(GMimeStream* s) { return s->position; }
gint64 streamLength(GMimeStream* s) { return s->bound_end - s->bound_start; }

GMimeStream* streamSubstream(GMimeStream* s, gint64 start, gint64 end) {
  return newBodyStreamImpl(asBody(s)->src, start, end);
}

void bodyStreamClassInit(gpointer klass, gpointer) {
  auto* c = static_cast<GMimeStreamClass*>(klass);
  c->read = streamRead;
  c->write = streamWrite;
  c->flush = streamFlush;
  c->close = streamClose;
  c->eos = streamEos;
  c->reset = streamReset;
  c->seek = streamSeek;
  c->tell = streamTell;
  c->length = streamLength;
  c->substream = streamSubstream;
}

void initOnceImpl() {
  std::call_once(g_init_once, [] {
    g_mime_init();
    GTypeInfo info{};
    info.class_size = sizeof(BodyStreamClass);
    info.class_init = bodyStreamClassInit;
    info.instance_size = sizeof(BodyStream);
    g_body_stream_type =
        g_type_register_static(g_mime_stream_get_type(), "MailgateBodyStream", &info, GTypeFlags{});
  });
}

}  // namespace

void gmimeInitOnce() { initOnceImpl(); }

GMimeStream* newGmimeBodyStream(GmimeBodySource* src, gint64 start, gint64 end) {
  return newBodyStreamImpl(src, start, end);
}

}  // namespace mailgate::filters
