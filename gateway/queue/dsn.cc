#include "gateway/queue/dsn.h"

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace mailgate::queue {

namespace {
constexpr size_t kMaxLine = 998;   // RFC 5322 2.1.1, without the CRLF
constexpr size_t kMaxReply = 512;  // a node's reply as the DSN quotes it
constexpr size_t kFoldAt = 76;     // folded header fields: lines about this long
constexpr const char* kCrlf = "\r\n";

bool isAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// "<a@b>" -> "a@b" (one pair of brackets, when there is one).
std::string_view bare(std::string_view addr) {
  while (!addr.empty() && addr.front() == ' ') addr.remove_prefix(1);
  while (!addr.empty() && addr.back() == ' ') addr.remove_suffix(1);
  if (addr.size() >= 2 && addr.front() == '<' && addr.back() == '>') addr = addr.substr(1, addr.size() - 2);
  return addr;
}

// Anything a client or a node sent, made fit for one header or body line: no control
// characters (CR, LF, NUL, TAB become a space); with ascii_only, 8-bit octets become '?'.
std::string oneLine(std::string_view s, bool ascii_only, size_t max) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= max) break;
    if (c < 0x20 || c == 0x7f)
      out.push_back(' ');
    else if (c >= 0x80 && ascii_only)
      out.push_back('?');
    else
      out.push_back(static_cast<char>(c));
  }
  if (!ascii_only) {
    // Do not leave half a UTF-8 sequence at a cut.
    size_t i = out.size();
    while (i > 0 && (static_cast<unsigned char>(out[i - 1]) & 0xC0) == 0x80) --i;
    if (i > 0 && static_cast<unsigned char>(out[i - 1]) >= 0xC0) {
      const unsigned char lead = static_cast<unsigned char>(out[i - 1]);
      const size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
      if (out.size() - (i - 1) < want) out.resize(i - 1);
    }
  }
  return out;
}

// RFC 5322 date-time, UTC, independent of the locale.
std::string rfc5322Date(int64_t ms) {
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const time_t t = static_cast<time_t>(ms / 1000);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[tm.tm_wday % 7], tm.tm_mday,
                kMonths[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

uint64_t fnv1a(std::string_view s, uint64_t h = 14695981039346656037ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex64(uint64_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[static_cast<size_t>(i)] = kHex[v & 0xF];
  return out;
}

// RFC 6533 utf-8-addr-xtext: ASCII printable but '+', '\', '=' and SP as is; the rest
// as \x{HEXPOINT} (the code point, upper-case hex). Invalid UTF-8 octets become U+FFFD.
std::string utf8AddrXtext(std::string_view addr) {
  std::string out;
  auto point = [&](uint32_t cp) {
    char buf[16];
    std::snprintf(buf, sizeof buf, cp < 0x100 ? "\\x{%02X}" : cp < 0x10000 ? "\\x{%04X}" : "\\x{%X}", cp);
    out += buf;
  };
  for (size_t i = 0; i < addr.size();) {
    const unsigned char c = static_cast<unsigned char>(addr[i]);
    if (c < 0x80) {
      if (c > 0x20 && c < 0x7f && c != '+' && c != '\\' && c != '=')
        out.push_back(static_cast<char>(c));
      else
        point(c);
      ++i;
      continue;
    }
    const size_t n = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
    uint32_t cp = n == 4 ? c & 0x07u : n == 3 ? c & 0x0Fu : c & 0x1Fu;
    bool ok = n != 0 && i + n <= addr.size();
    for (size_t k = 1; ok && k < n; ++k) {
      const unsigned char cc = static_cast<unsigned char>(addr[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    if (ok && ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
               (n == 4 && (cp < 0x10000 || cp > 0x10FFFF))))
      ok = false;
    point(ok ? cp : 0xFFFD);
    i += ok ? n : 1;
  }
  return out;
}

// "Final-Recipient: rfc822; a@b", or the utf-8 address type for an address that is not ASCII.
std::string addressField(std::string_view addr) {
  const std::string a = oneLine(bare(addr), false, 512);
  if (isAscii(a)) return "rfc822; " + a;
  return "utf-8; " + utf8AddrXtext(a);
}

bool digit(char c) { return c >= '0' && c <= '9'; }

// The enhanced status code of an SMTP reply ("550 5.1.1 ..." -> "5.1.1"), or empty.
std::string enhancedCode(std::string_view reply) {
  if (reply.size() < 4 || !digit(reply[0]) || !digit(reply[1]) || !digit(reply[2]) ||
      (reply[3] != ' ' && reply[3] != '-'))
    return {};
  std::string_view r = reply.substr(4);
  size_t i = 0;
  if (i >= r.size() || !digit(r[i])) return {};
  const char cls = r[i++];
  if (cls != '2' && cls != '4' && cls != '5') return {};
  for (int part = 0; part < 2; ++part) {
    if (i >= r.size() || r[i] != '.') return {};
    ++i;
    const size_t start = i;
    while (i < r.size() && digit(r[i]) && i - start < 3) ++i;
    if (i == start) return {};
  }
  if (i < r.size() && r[i] != ' ') return {};
  return std::string(r.substr(0, i));
}

std::string statusOf(const DsnRecipient& r) {
  if (r.expired) return "4.4.7";  // RFC 3463: delivery time expired
  std::string code = enhancedCode(r.reply);
  if (!code.empty() && code[0] != '2') return code;
  if (!r.reply.empty() && r.reply[0] == '4' && r.reply.size() >= 3 && digit(r.reply[1]) && digit(r.reply[2]))
    return "4.0.0";
  return "5.0.0";
}

bool smtpReply(std::string_view reply) {
  return reply.size() >= 3 && digit(reply[0]) && digit(reply[1]) && digit(reply[2]) &&
         (reply.size() == 3 || reply[3] == ' ' || reply[3] == '-');
}

// "Name: value", folded at spaces into lines of about kFoldAt octets, and cut into
// lines of at most kMaxLine octets where there is no space to fold at.
void field(std::string* out, std::string_view name, std::string_view value) {
  std::string line(name);
  line += ": ";
  size_t col = line.size();
  out->append(line);
  size_t i = 0;
  while (i < value.size()) {
    size_t sp = value.find(' ', i + 1);
    if (sp == std::string_view::npos) sp = value.size();
    std::string_view word = value.substr(i, sp - i);
    if (col + word.size() > kFoldAt && col > name.size() + 2 && word.size() > 1 && word[0] == ' ') {
      out->append(kCrlf);  // the space that starts the word continues the field
      col = 0;
    }
    while (col + word.size() > kMaxLine) {  // no space to fold at: cut
      const size_t take = kMaxLine - col;
      out->append(word.substr(0, take));
      out->append(kCrlf);
      out->push_back(' ');
      word.remove_prefix(take);
      col = 1;
    }
    out->append(word);
    col += word.size();
    i = sp;
  }
  out->append(kCrlf);
}

// The original header section as CRLF lines of at most kMaxLine octets, no NUL, no
// bare CR, ending at the first empty line, at most kDsnMaxHead octets.
std::string cleanHeaders(std::string_view head) {
  std::string out;
  size_t i = 0;
  while (i < head.size() && out.size() < kDsnMaxHead) {
    size_t nl = head.find('\n', i);
    if (nl == std::string_view::npos) nl = head.size();
    std::string_view l = head.substr(i, nl - i);
    i = nl + 1;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty()) break;  // the end of the header section
    std::string clean;
    for (char c : l) clean.push_back(c == '\0' || c == '\r' ? ' ' : c);
    while (clean.size() > kMaxLine) {
      out.append(clean, 0, kMaxLine);
      out.append(kCrlf);
      clean.erase(0, kMaxLine);
      clean.insert(0, " ");  // the rest continues the field
    }
    out += clean;
    out += kCrlf;
  }
  return out;
}

int64_t lastAttemptMs(const QueueEntry* e, std::string_view addr, int64_t fallback) {
  if (e) {
    for (const auto& r : e->rcpts)
      if (r.addr == addr && r.updated_ms > 0) return r.updated_ms;
  }
  return fallback;
}
}  // namespace

bool dsnDue(const QueueEntry& original) {
  if (original.dsn) return false;
  return !bare(original.mail_from).empty();
}

std::string buildDsn(const DsnInput& in) {
  const std::string host =
      in.reporting_mta.empty() ? std::string("localhost") : oneLine(in.reporting_mta, true, 255);
  const QueueEntry* orig = in.original;
  const std::string sender = orig ? oneLine(bare(orig->mail_from), false, 512) : std::string();
  const std::string id = orig ? orig->id : std::string();

  // The human-readable part.
  bool any_expired = false, any_refused = false;
  for (const auto& r : in.failed) (r.expired ? any_expired : any_refused) = true;
  std::string text;
  text += "This is the mail system at host " + host + ".";
  text += kCrlf;
  text += kCrlf;
  text += "I'm sorry to have to inform you that your message could not";
  text += kCrlf;
  text += "be delivered to one or more recipients.";
  if (any_refused) {
    text += kCrlf;
    text += "A recipient's mail server refused the message for good.";
  }
  if (any_expired) {
    text += kCrlf;
    text += "The message could not be delivered within the time allowed";
    text += kCrlf;
    text += "(the delivery was retried until then).";
  }
  text += kCrlf;
  text += kCrlf;
  if (!id.empty()) {
    text += "Queue id: " + id;
    text += kCrlf;
    text += kCrlf;
  }
  for (const auto& r : in.failed) {
    text += "<" + oneLine(bare(r.addr), false, 512) + ">: ";
    text += r.expired ? "delivery time expired; last reply: " : "";
    text += oneLine(r.reply.empty() ? std::string_view("(no reply)") : std::string_view(r.reply), false,
                    kMaxReply);
    text += kCrlf;
  }

  // The machine-readable part (RFC 3464). 7-bit: addresses that are not ASCII go as
  // utf-8-addr-xtext (RFC 6533); 8-bit octets in a reply become '?'.
  std::string status;
  field(&status, "Reporting-MTA", "dns; " + host);
  if (!id.empty()) field(&status, "X-Mailgate-Queue-ID", oneLine(id, true, 64));
  if (orig && orig->created_ms > 0) field(&status, "Arrival-Date", rfc5322Date(orig->created_ms));
  for (const auto& r : in.failed) {
    status += kCrlf;
    field(&status, "Final-Recipient", addressField(r.addr));
    field(&status, "Action", "failed");
    field(&status, "Status", statusOf(r));
    const std::string reply = oneLine(r.reply, true, kMaxReply);
    if (!reply.empty())
      field(&status, "Diagnostic-Code", (smtpReply(reply) ? "smtp; " : "X-mailgate; ") + reply);
    field(&status, "Last-Attempt-Date", rfc5322Date(lastAttemptMs(orig, r.addr, in.now_ms)));
  }

  const std::string headers = cleanHeaders(in.original_headers);
  const bool text_8bit = !isAscii(text);
  const bool head_8bit = !isAscii(headers);

  // A boundary that none of the parts contains.
  std::string boundary;
  for (uint64_t salt = 0;; ++salt) {
    uint64_t h = fnv1a(id);
    h = fnv1a(std::to_string(in.now_ms), h);
    h = fnv1a(headers, h);
    h = fnv1a(std::to_string(salt), h);
    boundary = "=_mailgate-dsn_" + hex64(h);
    const std::string delim = "--" + boundary;
    if (text.find(delim) == std::string::npos && status.find(delim) == std::string::npos &&
        headers.find(delim) == std::string::npos)
      break;
  }
  const std::string message_id = "<" + std::to_string(in.now_ms) + "." +
                                 hex64(fnv1a(id + "/" + std::to_string(in.failed.size()))) + ".dsn@" + host +
                                 ">";

  std::string out;
  field(&out, "From", "\"Mail Delivery System\" <MAILER-DAEMON@" + host + ">");
  field(&out, "To", "<" + sender + ">");
  field(&out, "Subject", "Undelivered Mail Returned to Sender");
  field(&out, "Date", rfc5322Date(in.now_ms));
  field(&out, "Message-ID", message_id);
  if (orig && !orig->message_id.empty()) {
    const std::string ref = oneLine(orig->message_id, false, 512);
    if (ref.front() == '<' && ref.back() == '>' && ref.find(' ') == std::string::npos) {
      field(&out, "In-Reply-To", ref);
      field(&out, "References", ref);
    }
  }
  field(&out, "Auto-Submitted", "auto-replied");
  field(&out, "MIME-Version", "1.0");
  field(&out, "Content-Type", "multipart/report; report-type=delivery-status; boundary=\"" + boundary + "\"");
  out += kCrlf;
  out += "This is a MIME-encapsulated message.";
  out += kCrlf;

  out += kCrlf + std::string("--") + boundary + kCrlf;
  out += "Content-Description: Notification";
  out += kCrlf;
  out += text_8bit ? "Content-Type: text/plain; charset=utf-8" : "Content-Type: text/plain; charset=us-ascii";
  out += kCrlf;
  if (text_8bit) {
    out += "Content-Transfer-Encoding: 8bit";
    out += kCrlf;
  }
  out += kCrlf;
  out += text;

  out += kCrlf + std::string("--") + boundary + kCrlf;
  out += "Content-Description: Delivery report";
  out += kCrlf;
  out += "Content-Type: message/delivery-status";
  out += kCrlf;
  out += kCrlf;
  out += status;

  out += kCrlf + std::string("--") + boundary + kCrlf;
  out += "Content-Description: Undelivered Message Headers";
  out += kCrlf;
  // Header fields that are not ASCII (an SMTPUTF8 message): message/global-headers (RFC 6532).
  out += head_8bit ? "Content-Type: message/global-headers" : "Content-Type: text/rfc822-headers";
  out += kCrlf;
  if (head_8bit) {
    out += "Content-Transfer-Encoding: 8bit";
    out += kCrlf;
  }
  out += kCrlf;
  out += headers;

  out += kCrlf + std::string("--") + boundary + "--" + kCrlf;
  return out;
}

QueueEntry dsnEntry(const QueueEntry& original, size_t seq, int64_t now_ms) {
  QueueEntry e;
  const std::string suffix = ".dsn" + std::to_string(seq);
  // Within the 64 characters of a queue id: the original's cut when it is that long.
  e.id =
      original.id.substr(0, std::min(original.id.size(), size_t{64} - std::min<size_t>(suffix.size(), 64))) +
      suffix;
  e.created_ms = now_ms;
  e.next_ms = 0;
  e.mail_from = "<>";
  const std::string_view to = bare(original.mail_from);
  e.rcpts.push_back({"<" + std::string(to) + ">", RcptState::kPending, "", now_ms});
  e.session_id = original.session_id;
  e.smtputf8 = original.smtputf8 || !isAscii(to);
  e.body_8bit = original.smtputf8 || original.body_8bit;  // the text and headers it quotes
  e.dsn = true;
  return e;
}

}  // namespace mailgate::queue
