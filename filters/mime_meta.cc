#include "filters/mime_meta.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "filters/gmime_body.h"

namespace mailgate::filters {
namespace {

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
    if (gIsA(obj, multipart_type)) {
      auto* mp = reinterpret_cast<GMimeMultipart*>(obj);
      for (int i = g_mime_multipart_get_count(mp); i > 0; i--) {
        if (GMimeObject* child = g_mime_multipart_get_part(mp, i - 1)) stack.push_back(child);
      }
    } else if (gIsA(obj, message_part_type)) {
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
    gmimeInitOnce();
    GmimeBodySource src;
    src.body = &body;
    const uint64_t size = body.size();
    const uint64_t max_stream = static_cast<uint64_t>(G_MAXINT64);
    src.limit = std::min({size, max_bytes, max_stream});
    MessageMeta meta;
    meta.truncated = size > src.limit;
    {
      GPtr<GMimeStream> stream(newGmimeBodyStream(&src, 0, static_cast<gint64>(src.limit)));
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
