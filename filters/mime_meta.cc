#include "filters/mime_meta.h"

#include <gmime/gmime.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>

namespace mailgate::filters {
namespace {

// The octets the parser may read, fetched from the body a window at a time. Shared by
// the stream the parser reads and the substreams GMime makes for part contents (which
// keep parts' bodies on the "disk" instead of copying them); owned by one call.
struct Source {
  static constexpr size_t kWindow = 64 * 1024;

  const MessageBody* body = nullptr;
  uint64_t limit = 0;  // octets readable: min(size, max_bytes)
  std::string window;  // body octets [window_off, window_off + window.size())
  uint64_t window_off = 0;
  bool failed = false;  // sticky: the parse is abandoned, error says why
  std::string error;
};

// A read-only, seekable GMimeStream over a Source (a GObject subclass, registered by
// hand: GLib's type macros are C casts). Its bounds are always set, so a substream
// is the same class with narrower bounds.
struct BodyStream {
  GMimeStream parent;
  Source* src;
};

struct BodyStreamClass {
  GMimeStreamClass parent_class;
};

GType g_body_stream_type = 0;
std::once_flag g_init_once;

BodyStream* asBody(GMimeStream* s) { return reinterpret_cast<BodyStream*>(s); }

GMimeStream* newBodyStream(Source* src, gint64 start, gint64 end) {
  auto* s = static_cast<BodyStream*>(g_object_new(g_body_stream_type, nullptr));
  s->src = src;
  g_mime_stream_construct(&s->parent, start, end);
  return &s->parent;
}

// Makes the window hold the octet at pos; false (and the error noted) on a failed or
// empty read. Nothing may throw through GMime's C frames.
bool fillWindow(Source* src, uint64_t pos) noexcept {
  if (pos >= src->window_off && pos - src->window_off < src->window.size()) return true;
  const uint64_t want = std::min<uint64_t>(Source::kWindow, src->limit - pos);
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
  Source* src = asBody(s)->src;
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
  return newBodyStream(asBody(s)->src, start, end);
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

void initOnce() {
  std::call_once(g_init_once, [] {
    g_mime_init();
    GTypeInfo info{};
    info.class_size = sizeof(BodyStreamClass);
    info.class_init = bodyStreamClassInit;
    info.instance_size = sizeof(BodyStream);
    g_body_stream_type =
        g_type_register_static(g_mime_stream_get_type(), "MailgateMimeMetaStream", &info, GTypeFlags{});
  });
}

struct GObjectUnref {
  void operator()(gpointer p) const { g_object_unref(p); }
};
template <typename T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

template <typename T>
bool isA(T* obj, GType type) {
  return obj != nullptr && g_type_check_instance_is_a(reinterpret_cast<GTypeInstance*>(obj), type);
}

// text as valid UTF-8 (invalid sequences replaced), at most kMimeMetaMaxItemOctets
// octets, cut on a character boundary; *cut says whether it was.
std::string boundedUtf8(const char* text, bool* cut) {
  gchar* fixed = g_utf8_validate(text, -1, nullptr) ? nullptr : g_utf8_make_valid(text, -1);
  const char* s = fixed != nullptr ? fixed : text;
  size_t len = std::strlen(s);
  *cut = len > kMimeMetaMaxItemOctets;
  if (*cut) {
    len = kMimeMetaMaxItemOctets;
    while (len > 0 && (static_cast<unsigned char>(s[len]) & 0xC0) == 0x80) len--;
  }
  std::string r(s, len);
  g_free(fixed);
  return r;
}

// GMime files a message's Content-* fields under its top-level part, the others under
// the message; the stream offsets put them back in their order.
void collectHeaders(GMimeMessage* msg, MessageMeta* out) {
  std::vector<std::pair<gint64, GMimeHeader*>> fields;
  auto add = [&](GMimeObject* obj) {
    GMimeHeaderList* list = obj != nullptr ? g_mime_object_get_header_list(obj) : nullptr;
    const int count = list != nullptr ? g_mime_header_list_get_count(list) : 0;
    for (int i = 0; i < count; i++) {
      if (GMimeHeader* h = g_mime_header_list_get_header_at(list, i)) {
        fields.emplace_back(g_mime_header_get_offset(h), h);
      }
    }
  };
  add(reinterpret_cast<GMimeObject*>(msg));
  add(g_mime_message_get_mime_part(msg));
  std::stable_sort(fields.begin(), fields.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string field;
  for (const auto& [offset, h] : fields) {
    if (out->headers.size() == kMimeMetaMaxHeaders) {
      out->truncated = true;
      return;
    }
    const char* name = g_mime_header_get_name(h);
    const char* value = g_mime_header_get_value(h);
    field.assign(name != nullptr ? name : "");
    field.append(": ");
    field.append(value != nullptr ? value : "");
    bool cut = false;
    out->headers.push_back(boundedUtf8(field.c_str(), &cut));
    if (cut) out->truncated = true;
  }
}

const char* partName(GMimeObject* obj) {
  const char* name = g_mime_object_get_content_disposition_parameter(obj, "filename");
  if (name == nullptr || *name == '\0') name = g_mime_object_get_content_type_parameter(obj, "name");
  return name;
}

// Depth first, in document order; an explicit stack (GMime bounds the nesting too).
void collectNames(GMimeMessage* msg, MessageMeta* out) {
  const GType multipart_type = g_mime_multipart_get_type();
  const GType message_part_type = g_mime_message_part_get_type();
  std::vector<GMimeObject*> stack;
  if (GMimeObject* top = g_mime_message_get_mime_part(msg)) stack.push_back(top);
  while (!stack.empty()) {
    GMimeObject* obj = stack.back();
    stack.pop_back();
    const char* name = partName(obj);
    if (name != nullptr && *name != '\0') {
      if (out->attachment_names.size() == kMimeMetaMaxNames) {
        out->truncated = true;
        return;
      }
      bool cut = false;
      out->attachment_names.push_back(boundedUtf8(name, &cut));
      if (cut) out->truncated = true;
    }
    if (isA(obj, multipart_type)) {
      auto* mp = reinterpret_cast<GMimeMultipart*>(obj);
      for (int i = g_mime_multipart_get_count(mp); i > 0; i--) {
        if (GMimeObject* child = g_mime_multipart_get_part(mp, i - 1)) stack.push_back(child);
      }
    } else if (isA(obj, message_part_type)) {
      GMimeMessage* inner = g_mime_message_part_get_message(reinterpret_cast<GMimeMessagePart*>(obj));
      if (inner != nullptr) {
        if (GMimeObject* top = g_mime_message_get_mime_part(inner)) stack.push_back(top);
      }
    }
  }
}

}  // namespace

bool extractMessageMeta(const MessageBody& body, MessageMeta* out, std::string* error, uint64_t max_bytes) {
  *out = MessageMeta{};
  try {
    initOnce();
    Source src;
    src.body = &body;
    const uint64_t size = body.size();
    const uint64_t max_stream = static_cast<uint64_t>(G_MAXINT64);
    src.limit = std::min({size, max_bytes, max_stream});
    MessageMeta meta;
    meta.truncated = size > src.limit;
    {
      GPtr<GMimeStream> stream(newBodyStream(&src, 0, static_cast<gint64>(src.limit)));
      GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
      g_mime_parser_set_format(parser.get(), GMIME_FORMAT_MESSAGE);
      g_mime_parser_set_persist_stream(parser.get(), TRUE);
      GPtr<GMimeMessage> msg(g_mime_parser_construct_message(parser.get(), nullptr));
      if (src.failed) {
        if (error != nullptr) *error = src.error;
        return false;
      }
      if (msg) {
        collectHeaders(msg.get(), &meta);
        collectNames(msg.get(), &meta);
      }
    }
    *out = std::move(meta);
    return true;
  } catch (...) {  // std::bad_alloc: GMime itself aborts when out of memory
    *out = MessageMeta{};
    try {
      if (error != nullptr) *error = "out of memory parsing the message";
    } catch (...) {
    }
    return false;
  }
}

}  // namespace mailgate::filters
