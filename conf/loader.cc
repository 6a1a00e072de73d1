// The YAML loader: text → yaml-cpp tree → typed structs of conf/config.h.
//
// Every problem is collected (up to kMaxErrors) with the line and column of the node
// it is about; nothing stops at the first error. yaml-cpp is used only here, and no
// exception leaves this file: the parser's exceptions become ConfigErrors.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <new>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "conf/config.h"
#include "gateway/core/ascii.h"

namespace mailgate::conf {
namespace {

constexpr size_t kMaxErrors = 100;
constexpr std::streamsize kMaxFileSize = 16 << 20;
constexpr uint32_t kMaxLineLimit = 1 << 20;
constexpr size_t kMaxNameLength = 64;

std::string join(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return path + "." + std::string(key);
}

std::string indexed(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

// A value as it may appear in a message: quoted, control bytes escaped, truncated.
std::string quote(std::string_view s) {
  constexpr size_t kMax = 60;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "\"";
}

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Undefined:
      return "nothing";
    case YAML::NodeType::Null:
      return "nothing (null)";
    case YAML::NodeType::Scalar:
      return quote(n.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
  }
  return "an unknown node";
}

bool parseUnsigned(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const auto digit = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *out = v;
  return true;
}

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Names of listeners and backends appear in logs, metrics and route results.
bool isValidName(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameLength) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return ascii::isAlpha(c) || ascii::isDigit(c) || c == '-' || c == '_' || c == '.';
  });
}

// RFC 1123 host name: labels of letters, digits and '-', not starting or ending with '-'.
bool isHostName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t label = 0;
  char prev = '.';
  for (char c : s) {
    if (c == '.') {
      if (label == 0 || prev == '-') return false;
      label = 0;
    } else if (ascii::isAlpha(c) || ascii::isDigit(c) || (c == '-' && label > 0)) {
      if (++label > 63) return false;
    } else {
      return false;
    }
    prev = c;
  }
  return label > 0 && prev != '-';
}

bool isIpv6Literal(const std::string& s) {
  ListenAddress a;
  return s.find(':') != std::string::npos && parseListenAddress("[" + s + "]:1", &a, nullptr);
}

// Checks that path names a readable regular file. Devices and FIFOs are never opened.
bool checkReadableFile(const std::string& path, std::string* why) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    *why = std::system_category().message(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *why = S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file";
    return false;
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    *why = std::system_category().message(errno);
    return false;
  }
  ::close(fd);
  return true;
}

// The value of key in a map node (the first, if the key is repeated).
bool findValue(const YAML::Node& map, std::string_view key, YAML::Node* out) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == key) {
      *out = it->second;
      return true;
    }
  }
  return false;
}

struct Entry {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
  // Where a problem with the value is reported: the value itself, or its key when the
  // value is empty ("key:" with nothing after it has the position of the next token).
  YAML::Mark mark() const { return value.IsNull() ? key_node.Mark() : value.Mark(); }
};

struct Fields {
  std::vector<Entry> entries;
  const Entry* find(std::string_view key) const {
    for (const auto& e : entries)
      if (e.key == key) return &e;
    return nullptr;
  }
};

template <typename E>
using EnumValues = std::initializer_list<std::pair<std::string_view, E>>;

class Loader {
 public:
  Loader(std::string file, std::filesystem::path base_dir)
      : file_(std::move(file)), base_dir_(std::move(base_dir)) {}

  void load(const YAML::Node& root, Config* cfg);

  void error(const YAML::Mark& m, std::string message) {
    if (errors_.size() > kMaxErrors) return;
    if (errors_.size() == kMaxErrors) {
      too_many_ = true;
      errors_.push_back({file_, 0, 0, "too many errors; stopping"});
      return;
    }
    const int line = m.line >= 0 ? m.line + 1 : 0;
    const int column = m.column >= 0 && line > 0 ? m.column + 1 : 0;
    errors_.push_back({file_, line, column, std::move(message)});
  }
  void error(const YAML::Node& n, std::string message) { error(n.Mark(), std::move(message)); }

  std::vector<ConfigError> takeErrors() {
    // Report in file order; the "too many" note stays last.
    ConfigError last;
    if (too_many_) {
      last = errors_.back();
      errors_.pop_back();
    }
    std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
      return a.line != b.line ? a.line < b.line : a.column < b.column;
    });
    if (too_many_) errors_.push_back(std::move(last));
    return std::move(errors_);
  }

 private:
  // --- generic helpers -----------------------------------------------------------
  bool fields(const YAML::Node& node, const std::string& path, std::initializer_list<std::string_view> known,
              Fields* out);
  void requireKey(const Fields& f, std::string_view key, const YAML::Mark& where, const std::string& path);
  bool scalar(const YAML::Node& v, const std::string& where, const char* expected, std::string* out);
  bool scalar(const Entry& e, const std::string& where, const char* expected, std::string* out);
  void getString(const Fields& f, std::string_view key, const std::string& path, std::string* out,
                 bool allow_empty = true);
  void getBool(const Fields& f, std::string_view key, const std::string& path, bool* out);
  void getDuration(const Fields& f, std::string_view key, const std::string& path, Duration* out,
                   bool allow_zero);
  void getSize(const Fields& f, std::string_view key, const std::string& path, uint64_t min, uint64_t max,
               uint32_t* out);
  void getNumber(const Fields& f, std::string_view key, const std::string& path, uint64_t min, uint64_t max,
                 uint32_t* out);
  void getPort(const Fields& f, std::string_view key, const std::string& path, uint16_t* out);
  void getFile(const Fields& f, std::string_view key, const std::string& path, std::string* out);
  void getName(const Fields& f, std::string_view key, const std::string& path, std::string* out);
  template <typename E>
  void getEnum(const Fields& f, std::string_view key, const std::string& path, EnumValues<E> values, E* out);
  void unsupportedSection(const YAML::Node& node, const std::string& path);

  // --- sections ------------------------------------------------------------------
  void loadServer(const YAML::Node& n, ServerConfig* s);
  void loadLog(const YAML::Node& n, LogConfig* l);
  void loadAdmin(const YAML::Node& n, AdminConfig* a);
  void loadTls(const YAML::Node& n, TlsConfig* t);
  void loadListeners(const Entry& section, Config* cfg);
  void loadListener(const YAML::Node& n, const std::string& path, const Config& cfg, ListenerConfig* l,
                    std::map<std::string, std::string>* addresses);
  void loadDirectory(const Entry& section, DirectoryConfig* d);
  void loadPostgres(const YAML::Node& n, const std::string& path, PostgresDirectoryConfig* p);
  void loadBackends(const YAML::Node& n, Config* cfg);
  void loadBackend(const YAML::Node& n, const std::string& path, BackendConfig* b);
  void loadRouting(const YAML::Node& n, Config* cfg);
  void checkSubmissionRelay(const YAML::Node& root, const Config& cfg);
  void checkBackendRef(const Fields& f, std::string_view key, const std::string& path, const Config& cfg);
  void loadHooks(const YAML::Node& n, Config* cfg);
  void loadScanners(const Entry& section, HooksConfig* h);
  void loadFlows(const Entry& section, Config* cfg);

  std::string resolve(const std::string& p) const {
    std::filesystem::path fp(p);
    if (fp.is_relative()) fp = base_dir_ / fp;
    return fp.lexically_normal().string();
  }

  std::string file_;
  std::filesystem::path base_dir_;
  std::vector<ConfigError> errors_;
  bool too_many_ = false;
  std::vector<std::string> bad_scanners_;  // declared with an error already reported
};

bool Loader::fields(const YAML::Node& node, const std::string& path,
                    std::initializer_list<std::string_view> known, Fields* out) {
  if (node.IsNull()) return true;  // "section:" with nothing under it = all defaults
  if (!node.IsMap()) {
    error(node, (path.empty() ? std::string("the configuration") : path) + ": expected a map, got " +
                    describe(node));
    return false;
  }
  const std::string where = path.empty() ? std::string("at the top level") : "in " + path;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key_node = it->first;
    if (!key_node.IsScalar()) {
      error(key_node, "keys must be plain strings, got " + describe(key_node) + " " + where);
      continue;
    }
    const std::string key = key_node.Scalar();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string message = "unknown key " + quote(key) + " " + where;
      std::string_view best;
      size_t best_distance = 3;
      for (auto k : known) {
        const size_t d = editDistance(ascii::lower(key), k);
        if (d < best_distance) best_distance = d, best = k;
      }
      if (!best.empty()) message += " (did you mean " + quote(best) + "?)";
      error(key_node, std::move(message));
      continue;
    }
    if (out->find(key)) {
      error(key_node, "duplicate key " + quote(key) + " " + where);
      continue;
    }
    out->entries.push_back({key, key_node, it->second});
  }
  return true;
}

void Loader::requireKey(const Fields& f, std::string_view key, const YAML::Mark& where,
                        const std::string& path) {
  if (!f.find(key)) error(where, path + ": missing required key " + quote(key));
}

bool Loader::scalar(const YAML::Node& v, const std::string& where, const char* expected, std::string* out) {
  if (!v.IsScalar()) {
    error(v, where + ": expected " + expected + ", got " + describe(v));
    return false;
  }
  *out = v.Scalar();
  return true;
}

bool Loader::scalar(const Entry& e, const std::string& where, const char* expected, std::string* out) {
  if (!e.value.IsScalar()) {
    error(e.mark(), where + ": expected " + expected + ", got " + describe(e.value));
    return false;
  }
  *out = e.value.Scalar();
  return true;
}

void Loader::getString(const Fields& f, std::string_view key, const std::string& path, std::string* out,
                       bool allow_empty) {
  const Entry* e = f.find(key);
  if (!e) return;
  const std::string where = join(path, key);
  std::string s;
  if (!scalar(*e, where, "a string", &s)) return;
  if (!allow_empty && s.empty()) {
    error(e->mark(), where + ": must not be empty");
    return;
  }
  if (s.find('\0') != std::string::npos) {
    error(e->mark(), where + ": must not contain a NUL byte");
    return;
  }
  *out = std::move(s);
}

void Loader::getBool(const Fields& f, std::string_view key, const std::string& path, bool* out) {
  const Entry* e = f.find(key);
  if (!e) return;
  const std::string where = join(path, key);
  std::string s;
  if (!scalar(*e, where, "true or false", &s)) return;
  if (s == "true" || s == "True" || s == "TRUE") {
    *out = true;
  } else if (s == "false" || s == "False" || s == "FALSE") {
    *out = false;
  } else {
    error(e->mark(), where + ": expected true or false, got " + quote(s));
  }
}

void Loader::getDuration(const Fields& f, std::string_view key, const std::string& path, Duration* out,
                         bool allow_zero) {
  const Entry* e = f.find(key);
  if (!e) return;
  const std::string where = join(path, key);
  std::string s;
  if (!scalar(*e, where, "a duration", &s)) return;
  Duration d{};
  if (!parseDuration(s, &d)) {
    error(e->mark(), where + ": invalid duration " + quote(s) +
                         " (use 250ms, 30s, 5m, 1h or 2d; a bare number is seconds)");
    return;
  }
  if (!allow_zero && d.count() == 0) {
    error(e->mark(), where + ": must be greater than 0");
    return;
  }
  *out = d;
}

void Loader::getSize(const Fields& f, std::string_view key, const std::string& path, uint64_t min,
                     uint64_t max, uint32_t* out) {
  const Entry* e = f.find(key);
  if (!e) return;
  const std::string where = join(path, key);
  std::string s;
  if (!scalar(*e, where, "a size", &s)) return;
  uint64_t v = 0;
  if (!parseSize(s, &v)) {
    error(e->mark(), where + ": invalid size " + quote(s) + " (use 512, 64K, 50M or 1G)");
    return;
  }
  if (v < min || v > max) {
    error(e->mark(), where + ": " + s + " is out of range (" + std::to_string(min) + " to " +
                         std::to_string(max) + " bytes)");
    return;
  }
  *out = static_cast<uint32_t>(v);
}

void Loader::getNumber(const Fields& f, std::string_view key, const std::string& path, uint64_t min,
                       uint64_t max, uint32_t* out) {
  const Entry* e = f.find(key);
  if (!e) return;
  const std::string where = join(path, key);
  std::string s;
  if (!scalar(*e, where, "a number", &s)) return;
  uint64_t v = 0;
  if (!parseUnsigned(s, &v) || v < min || v > max) {
    error(e->mark(), where + ": expected a number from " + std::to_string(min) + " to " +
                         std::to_string(max) + ", got " + quote(s));
    return;
  }
  *out = static_cast<uint32_t>(v);
}

void Loader::getPort(const Fields& f, std::string_view key, const std::string& path, uint16_t* out) {
  uint32_t v = *out;
  getNumber(f, key, path, 1, 65535, &v);
  *out = static_cast<uint16_t>(v);
}

void Loader::getFile(const Fields& f, std::string_view key, const std::string& path, std::string* out) {
  const Entry* e = f.find(key);
  if (!e) return;
  std::string s;
  getString(f, key, path, &s, false);
  if (s.empty()) return;  // already reported
  const std::string resolved = resolve(s);
  std::string why;
  if (!checkReadableFile(resolved, &why))
    error(e->mark(), join(path, key) + ": cannot read " + resolved + ": " + why);
  *out = resolved;
}

void Loader::getName(const Fields& f, std::string_view key, const std::string& path, std::string* out) {
  const Entry* e = f.find(key);
  if (!e) return;
  std::string s;
  getString(f, key, path, &s);
  if (!e->value.IsScalar()) return;  // already reported
  if (!isValidName(s)) {
    error(e->mark(), join(path, key) + ": " + quote(s) + " is not a valid name (1 to " +
                         std::to_string(kMaxNameLength) + " characters among A-Z a-z 0-9 - _ .)");
    return;
  }
  *out = std::move(s);
}

template <typename E>
void Loader::getEnum(const Fields& f, std::string_view key, const std::string& path, EnumValues<E> values,
                     E* out) {
  const Entry* e = f.find(key);
  if (!e) return;
  const std::string where = join(path, key);
  std::string choices;
  for (const auto& [name, value] : values) choices += (choices.empty() ? "" : ", ") + std::string(name);
  std::string s;
  if (!scalar(*e, where, ("one of " + choices).c_str(), &s)) return;
  for (const auto& [name, value] : values) {
    if (s == name) {
      *out = value;
      return;
    }
  }
  error(e->mark(), where + ": expected one of " + choices + ", got " + quote(s));
}

void Loader::unsupportedSection(const YAML::Node& node, const std::string& path) {
  if (node.IsNull()) return;
  if (!node.IsMap()) {
    error(node, path + ": expected a map, got " + describe(node));
    return;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node k = it->first;
    error(k, path + ": " + (k.IsScalar() ? quote(k.Scalar()) : describe(k)) + " is not supported yet (" +
                 path + " must be empty)");
  }
}

// --- sections --------------------------------------------------------------------

void Loader::load(const YAML::Node& root, Config* cfg) {
  Fields f;
  if (!fields(root, "",
              {"server", "log", "admin", "tls", "listeners", "directory", "backends", "routing", "limits",
               "policies", "hooks"},
              &f))
    return;
  // Order matters for cross-references, not the order in the file: certificates
  // before listeners, backends before routes.
  if (const Entry* e = f.find("server")) loadServer(e->value, &cfg->server);
  if (const Entry* e = f.find("log")) loadLog(e->value, &cfg->log);
  if (const Entry* e = f.find("admin")) loadAdmin(e->value, &cfg->admin);
  if (const Entry* e = f.find("tls")) loadTls(e->value, &cfg->tls);
  if (const Entry* e = f.find("directory")) {
    loadDirectory(*e, &cfg->directory);
  } else {
    error(root, "missing required section \"directory\"");
  }
  if (const Entry* e = f.find("backends")) loadBackends(e->value, cfg);
  if (const Entry* e = f.find("listeners")) {
    loadListeners(*e, cfg);
  } else {
    error(root, "missing required section \"listeners\"");
  }
  if (const Entry* e = f.find("routing")) loadRouting(e->value, cfg);
  checkSubmissionRelay(root, *cfg);
  if (const Entry* e = f.find("limits")) {
    // Interim: only line_timeout and early_talker until the full limits parser lands.
    Fields lf;
    bool supported = true;
    if (e->value.IsMap())
      for (auto it = e->value.begin(); it != e->value.end(); ++it) {
        const YAML::Node k = it->first;
        if (k.IsScalar() && (k.Scalar() == "line_timeout" || k.Scalar() == "early_talker")) continue;
        supported = false;
        error(k, std::string("limits: ") + (k.IsScalar() ? quote(k.Scalar()) : describe(k)) +
                     " is not supported yet (only line_timeout and early_talker)");
      }
    if (supported && fields(e->value, "limits", {"line_timeout", "early_talker"}, &lf)) {
      LimitsConfig& lim = cfg->policy.limits;
      lim.present = true;
      getDuration(lf, "line_timeout", "limits", &lim.line_timeout, true);
      if (const Entry* et = lf.find("early_talker")) {
        Fields ef;
        if (fields(et->value, "limits.early_talker", {"listeners", "greet_wait", "action"}, &ef)) {
          if (const Entry* ls = ef.find("listeners"); ls && ls->value.IsSequence())
            for (size_t i = 0; i < ls->value.size(); ++i) {
              std::string name;
              if (scalar(ls->value[i], "limits.early_talker.listeners", "a listener name", &name))
                lim.early_talker.listeners.push_back(name);
            }
          getDuration(ef, "greet_wait", "limits.early_talker", &lim.early_talker.greet_wait, true);
          getEnum<LimitAction>(ef, "action", "limits.early_talker",
                               {{"reject", LimitAction::kReject}, {"tempfail", LimitAction::kTempfail}},
                               &lim.early_talker.action);
        }
      }
    }
  }
  if (const Entry* e = f.find("policies")) unsupportedSection(e->value, "policies");
  if (const Entry* e = f.find("hooks")) loadHooks(e->value, cfg);
}

// --- hooks -----------------------------------------------------------------------

void Loader::loadHooks(const YAML::Node& n, Config* cfg) {
  const std::string path = "hooks";
  Fields f;
  if (!fields(n, path, {"defaults", "scanners", "flows", "quarantine"}, &f)) return;
  HooksConfig& h = cfg->hooks;
  if (const Entry* e = f.find("defaults")) {
    const std::string dpath = join(path, "defaults");
    Fields df;
    if (fields(e->value, dpath, {"on_error", "timeouts", "max_size", "on_oversize"}, &df)) {
      getEnum<HookAction>(df, "on_error", dpath,
                          {{"accept", HookAction::kAccept}, {"tempfail", HookAction::kTempfail},
                           {"reject", HookAction::kReject}},
                          &h.on_error);
      if (const Entry* t = df.find("timeouts")) {
        const std::string tpath = join(dpath, "timeouts");
        Fields tf;
        if (fields(t->value, tpath, {"connect", "scan"}, &tf)) {
          getDuration(tf, "connect", tpath, &h.connect_timeout, false);
          getDuration(tf, "scan", tpath, &h.scan_timeout, false);
        }
      }
      uint32_t max_size = static_cast<uint32_t>(h.max_size);
      getSize(df, "max_size", dpath, 1024, 0xffffffffu, &max_size);
      h.max_size = max_size;
      getEnum<OversizeAction>(df, "on_oversize", dpath,
                              {{"accept_unscanned", OversizeAction::kAcceptUnscanned},
                               {"tempfail", OversizeAction::kTempfail},
                               {"reject", OversizeAction::kReject}},
                              &h.on_oversize);
    }
  }
  if (const Entry* e = f.find("scanners")) loadScanners(*e, &h);
  if (const Entry* e = f.find("flows")) loadFlows(*e, cfg);
  if (const Entry* e = f.find("quarantine"))
    if (!e->value.IsNull()) error(e->key_node, "hooks.quarantine: is not supported yet");
}

void Loader::loadScanners(const Entry& section, HooksConfig* h) {
  const YAML::Node& n = section.value;
  if (n.IsNull()) return;
  if (!n.IsMap()) {
    error(section.mark(), "hooks.scanners: expected a map of scanner names, got " + describe(n));
    return;
  }
  for (auto it = n.begin(); it != n.end(); ++it) {
    const YAML::Node key = it->first;
    if (!key.IsScalar() || !isValidName(key.Scalar())) {
      error(key, "hooks.scanners: " + (key.IsScalar() ? quote(key.Scalar()) : describe(key)) +
                     " is not a valid scanner name (1 to " + std::to_string(kMaxNameLength) +
                     " characters among A-Z a-z 0-9 - _ .)");
      continue;
    }
    ScannerConfig sc;
    sc.name = key.Scalar();
    const std::string path = join("hooks.scanners", sc.name);
    if (h->findScanner(sc.name)) {
      error(key, path + ": duplicate scanner name " + quote(sc.name));
      continue;
    }
    bad_scanners_.push_back(sc.name);  // until it is found good
    const YAML::Node item = it->second;
    if (!item.IsMap()) {
      error(item.IsNull() ? key.Mark() : item.Mark(), path + ": expected a map, got " + describe(item));
      continue;
    }
    // The type decides the keys; a type that is not built yet is said so plainly.
    YAML::Node type_node;
    if (!findValue(item, "type", &type_node)) {
      error(key, path + ": missing required key \"type\"");
      continue;
    }
    if (!type_node.IsScalar()) {
      error(type_node, path + ".type: expected a string, got " + describe(type_node));
      continue;
    }
    sc.type = type_node.Scalar();
    if (sc.type == "icap" || sc.type == "milter" || sc.type == "dlp") {
      error(type_node, path + ".type: scanner type " + sc.type + " is not supported yet");
      continue;
    }
    if (sc.type != "clamd") {
      error(type_node, path + ".type: expected clamd, got " + quote(sc.type));
      continue;
    }
    Fields f;
    if (!fields(item, path, {"type", "endpoints", "on_error"}, &f)) continue;
    requireKey(f, "endpoints", key.Mark(), path);
    if (const Entry* e = f.find("endpoints")) {
      const std::string epath = join(path, "endpoints");
      if (!e->value.IsSequence() || e->value.size() == 0) {
        error(e->mark(), epath + ": expected a list of one or more addresses (unix:/path, tcp:HOST:PORT), got " +
                             (e->value.IsSequence() ? std::string("an empty list") : describe(e->value)));
      } else {
        for (size_t i = 0; i < e->value.size(); ++i) {
          const YAML::Node ep = e->value[i];
          std::string text;
          if (!scalar(ep, indexed(epath, i), "an address", &text)) continue;
          ServiceEndpoint parsed;
          std::string why;
          if (!parseServiceEndpoint(text, &parsed, &why)) {
            error(ep, indexed(epath, i) + ": " + quote(text) + ": " + why);
            continue;
          }
          sc.endpoints.push_back(std::move(text));
        }
      }
    }
    if (f.find("on_error")) {
      HookAction a = h->on_error;
      getEnum<HookAction>(f, "on_error", path,
                          {{"accept", HookAction::kAccept}, {"tempfail", HookAction::kTempfail},
                           {"reject", HookAction::kReject}},
                          &a);
      sc.on_error = a;
    }
    if (sc.endpoints.empty()) continue;  // reported
    bad_scanners_.pop_back();
    h->scanners.push_back(std::move(sc));
  }
}

void Loader::loadFlows(const Entry& section, Config* cfg) {
  const YAML::Node& n = section.value;
  if (n.IsNull()) return;
  if (!n.IsSequence()) {
    error(section.mark(), "hooks.flows: expected a list, got " + describe(n));
    return;
  }
  for (size_t i = 0; i < n.size(); ++i) {
    const YAML::Node item = n[i];
    const std::string path = indexed("hooks.flows", i);
    if (!item.IsMap()) {
      error(item, path + ": expected a map, got " + describe(item));
      continue;
    }
    Fields f;
    if (!fields(item, path, {"when", "run"}, &f)) continue;
    requireKey(f, "run", item.Mark(), path);
    FlowConfig flow;
    if (const Entry* e = f.find("when")) {
      const std::string wpath = join(path, "when");
      Fields wf;
      if (fields(e->value, wpath, {"listener", "authenticated"}, &wf)) {
        if (const Entry* l = wf.find("listener")) {
          const std::string lpath = join(wpath, "listener");
          std::vector<YAML::Node> names;
          if (l->value.IsSequence() && l->value.size() > 0) {
            for (size_t j = 0; j < l->value.size(); ++j) names.push_back(l->value[j]);
          } else if (l->value.IsScalar()) {
            names.push_back(l->value);
          } else {
            error(l->mark(), lpath + ": expected a listener name or a list of them, got " + describe(l->value));
          }
          for (const YAML::Node& name : names) {
            std::string s;
            if (!scalar(name, lpath, "a listener name", &s)) continue;
            const bool known = std::any_of(cfg->listeners.begin(), cfg->listeners.end(),
                                           [&](const ListenerConfig& lc) { return lc.name == s; });
            if (!known) {
              error(name, lpath + ": unknown listener " + quote(s));
              continue;
            }
            flow.listeners.push_back(std::move(s));
          }
        }
        if (wf.find("authenticated")) {
          bool b = false;
          getBool(wf, "authenticated", wpath, &b);
          flow.authenticated = b;
        }
      }
    }
    if (const Entry* e = f.find("run")) {
      const std::string rpath = join(path, "run");
      if (!e->value.IsSequence() || e->value.size() == 0) {
        error(e->mark(), rpath + ": expected a list of one or more scanner names, got " +
                             (e->value.IsSequence() ? std::string("an empty list") : describe(e->value)));
      } else {
        for (size_t j = 0; j < e->value.size(); ++j) {
          const YAML::Node name = e->value[j];
          std::string s;
          if (!scalar(name, indexed(rpath, j), "a scanner name", &s)) continue;
          if (!cfg->hooks.findScanner(s)) {
            // A scanner declared with a problem was reported where it is declared.
            if (std::find(bad_scanners_.begin(), bad_scanners_.end(), s) == bad_scanners_.end())
              error(name, indexed(rpath, j) + ": unknown scanner " + quote(s));
            continue;
          }
          if (std::find(flow.run.begin(), flow.run.end(), s) != flow.run.end()) {
            error(name, indexed(rpath, j) + ": scanner " + quote(s) + " is listed twice");
            continue;
          }
          flow.run.push_back(std::move(s));
        }
      }
    }
    cfg->hooks.flows.push_back(std::move(flow));
  }
}

void Loader::loadServer(const YAML::Node& n, ServerConfig* s) {
  const std::string path = "server";
  Fields f;
  if (!fields(n, path, {"threads", "shutdown_grace", "workers", "content_workers", "spool_dir", "spool_memory"}, &f)) return;
  if (const Entry* e = f.find("threads")) {
    std::string v;
    uint64_t count = 0;
    if (scalar(*e, "server.threads", "auto or a number", &v)) {
      if (v == "auto") {
        s->threads = 0;
      } else if (parseUnsigned(v, &count) && count >= 1 && count <= 1024) {
        s->threads = static_cast<unsigned>(count);
      } else {
        error(e->mark(), "server.threads: expected auto or a number from 1 to 1024, got " + quote(v));
      }
    }
  }
  getDuration(f, "shutdown_grace", path, &s->shutdown_grace, true);
  uint32_t workers = s->workers;
  getNumber(f, "workers", path, 1, 256, &workers);
  s->workers = workers;
  uint32_t content_workers = s->content_workers;
  getNumber(f, "content_workers", path, 1, 256, &content_workers);
  s->content_workers = content_workers;
  getSize(f, "spool_memory", path, 0, uint64_t{1} << 30, &s->spool_memory);
  if (const Entry* e = f.find("spool_dir")) {
    std::string dir;
    getString(f, "spool_dir", path, &dir, false);
    if (!dir.empty()) {
      dir = resolve(dir);
      std::error_code ec;
      if (!std::filesystem::is_directory(dir, ec))
        error(e->mark(), "server.spool_dir: " + dir + " is not a directory");
      else if (::access(dir.c_str(), W_OK | X_OK) != 0)
        error(e->mark(), "server.spool_dir: cannot write to " + dir);
      s->spool_dir = std::move(dir);
    }
  }
}

void Loader::loadLog(const YAML::Node& n, LogConfig* l) {
  Fields f;
  if (!fields(n, "log", {"level", "format"}, &f)) return;
  getEnum<LogLevel>(f, "level", "log",
                    {{"debug", LogLevel::kDebug},
                     {"info", LogLevel::kInfo},
                     {"warn", LogLevel::kWarn},
                     {"error", LogLevel::kError}},
                    &l->level);
  getEnum<LogFormat>(f, "format", "log", {{"json", LogFormat::kJson}, {"text", LogFormat::kText}},
                     &l->format);
}

void Loader::loadAdmin(const YAML::Node& n, AdminConfig* a) {
  Fields f;
  if (!fields(n, "admin", {"listen"}, &f)) return;
  std::string s;
  getString(f, "listen", "admin", &s);
  if (s.empty()) return;
  ListenAddress addr;
  std::string why;
  if (!parseListenAddress(s, &addr, &why)) {
    error(f.find("listen")->mark(), "admin.listen: invalid address " + quote(s) + ": " + why);
    return;
  }
  a->listen = std::move(s);
}

void Loader::loadTls(const YAML::Node& n, TlsConfig* t) {
  Fields f;
  if (!fields(n, "tls", {"certificates", "min_version", "ciphers"}, &f)) return;
  if (const Entry* e = f.find("certificates")) {
    if (e->value.IsSequence()) {
      for (size_t i = 0; i < e->value.size(); ++i) {
        const YAML::Node item = e->value[i];
        const std::string path = indexed("tls.certificates", i);
        Fields cf;
        if (!item.IsMap()) {
          error(item, path + ": expected a map with cert and key, got " + describe(item));
          continue;
        }
        if (!fields(item, path, {"cert", "key"}, &cf)) continue;
        requireKey(cf, "cert", item.Mark(), path);
        requireKey(cf, "key", item.Mark(), path);
        CertificateConfig c;
        getFile(cf, "cert", path, &c.cert);
        getFile(cf, "key", path, &c.key);
        t->certificates.push_back(std::move(c));
      }
    } else if (!e->value.IsNull()) {
      error(e->mark(), "tls.certificates: expected a list, got " + describe(e->value));
    }
  }
  std::string version = t->min_version;
  getEnum<std::string>(f, "min_version", "tls", {{"TLSv1.2", "TLSv1.2"}, {"TLSv1.3", "TLSv1.3"}}, &version);
  t->min_version = version;
  getString(f, "ciphers", "tls", &t->ciphers);
}

void Loader::loadListeners(const Entry& section, Config* cfg) {
  const YAML::Node& n = section.value;
  if (!n.IsSequence()) {
    error(section.mark(), "listeners: expected a list, got " + describe(n));
    return;
  }
  if (n.size() == 0) {
    error(section.mark(), "listeners: at least one listener is required");
    return;
  }
  std::map<std::string, int> names;              // name → line of its first definition
  std::map<std::string, std::string> addresses;  // normalised address → listener name
  for (size_t i = 0; i < n.size(); ++i) {
    const YAML::Node item = n[i];
    const std::string path = indexed("listeners", i);
    if (!item.IsMap()) {
      error(item, path + ": expected a map, got " + describe(item));
      continue;
    }
    ListenerConfig l;
    const YAML::Mark m = item.Mark();
    l.line = m.line + 1;
    l.column = m.column + 1;
    loadListener(item, path, *cfg, &l, &addresses);
    YAML::Node name_node;
    if (!l.name.empty() && findValue(item, "name", &name_node)) {
      const auto [it, inserted] = names.emplace(l.name, name_node.Mark().line + 1);
      if (!inserted)
        error(name_node, path + ".name: duplicate listener name " + quote(l.name) +
                             " (first defined at line " + std::to_string(it->second) + ")");
    }
    cfg->listeners.push_back(std::move(l));
  }
}

void Loader::loadListener(const YAML::Node& n, const std::string& path, const Config& cfg, ListenerConfig* l,
                          std::map<std::string, std::string>* addresses) {
  Fields f;
  if (!fields(
          n, path,
          {"name", "protocol", "listen", "tls", "proxy_protocol", "allow_plaintext_auth", "preauth_timeout",
           "idle_timeout", "max_line", "max_literal", "max_bad_commands", "max_auth_attempts", "max_message_size",
           "max_recipients", "max_messages", "greeting_delay", "sender_check", "postmaster", "append_limit"},
          &f))
    return;
  requireKey(f, "name", n.Mark(), path);
  requireKey(f, "protocol", n.Mark(), path);
  requireKey(f, "listen", n.Mark(), path);
  getName(f, "name", path, &l->name);
  getEnum<Protocol>(f, "protocol", path,
                    {{"imap", Protocol::kImap},
                     {"pop3", Protocol::kPop3},
                     {"smtp", Protocol::kSmtp},
                     {"submission", Protocol::kSubmission}},
                    &l->protocol);

  if (const Entry* e = f.find("listen")) {
    const std::string where = join(path, "listen");
    std::vector<YAML::Node> items;
    if (e->value.IsScalar()) {
      items.push_back(e->value);
    } else if (e->value.IsSequence()) {
      if (e->value.size() == 0) error(e->mark(), where + ": at least one address is required");
      for (size_t i = 0; i < e->value.size(); ++i) items.push_back(e->value[i]);
    } else {
      error(e->mark(), where + ": expected an address or a list of addresses, got " + describe(e->value));
    }
    for (const auto& item : items) {
      std::string s;
      if (!scalar(item, where, "an address", &s)) continue;
      ListenAddress addr;
      std::string why;
      if (!parseListenAddress(s, &addr, &why)) {
        error(item, where + ": invalid address " + quote(s) + ": " + why);
        continue;
      }
      // "*" and "0.0.0.0" both mean every IPv4 address: the same socket.
      const std::string host = addr.any() || addr.host == "0.0.0.0" ? std::string("*") : addr.host;
      const std::string key = host + "#" + std::to_string(addr.port);
      const auto [it, inserted] = addresses->emplace(key, l->name);
      if (!inserted) {
        error(item, where + ": address " + quote(s) + " is already used by listener " + quote(it->second));
        continue;
      }
      l->listen.push_back(std::move(s));
    }
  }

  getEnum<TlsMode>(
      f, "tls", path,
      {{"none", TlsMode::kNone}, {"starttls", TlsMode::kStarttls}, {"implicit", TlsMode::kImplicit}},
      &l->tls);
  if (l->tls != TlsMode::kNone && cfg.tls.certificates.empty())
    error(f.find("tls")->mark(), join(path, "tls") + ": " + f.find("tls")->value.Scalar() +
                                     " needs a certificate, but tls.certificates is empty");
  getBool(f, "proxy_protocol", path, &l->proxy_protocol);
  getBool(f, "allow_plaintext_auth", path, &l->allow_plaintext_auth);
  getDuration(f, "preauth_timeout", path, &l->preauth_timeout, false);
  getDuration(f, "idle_timeout", path, &l->idle_timeout, false);
  getSize(f, "max_line", path, 0, kMaxLineLimit, &l->max_line);
  getSize(f, "max_literal", path, 0, std::numeric_limits<uint32_t>::max(), &l->max_literal);
  getNumber(f, "max_bad_commands", path, 1, 1000000, &l->max_bad_commands);
  getNumber(f, "max_auth_attempts", path, 1, 1000000, &l->max_auth_attempts);
  getSize(f, "max_message_size", path, 1024, uint64_t{1} << 30, &l->max_message_size);
  getNumber(f, "max_recipients", path, 1, 100000, &l->max_recipients);
  getNumber(f, "max_messages", path, 1, 1000000, &l->max_messages);
  getDuration(f, "greeting_delay", path, &l->greeting_delay, true);
  if (const Entry* e = f.find("append_limit")) {
    uint32_t limit = 0;
    getSize(f, "append_limit", path, 0, std::numeric_limits<uint32_t>::max(), &limit);
    if (l->protocol != Protocol::kImap)
      error(e->mark(), join(path, "append_limit") + ": only an imap listener has APPEND");
    l->append_limit = limit;
  }
  getEnum<bool>(f, "sender_check", path, {{"owned", false}, {"any", true}}, &l->sender_any);
  if (const Entry* e = f.find("sender_check"); e && l->protocol != Protocol::kSubmission)
    error(e->mark(), join(path, "sender_check") + ": only a submission listener checks senders");
  if (const Entry* e = f.find("postmaster")) {
    std::string pm;
    getString(f, "postmaster", path, &pm, false);
    const size_t at = pm.find('@');
    const bool valid = !pm.empty() && at != std::string::npos && at > 0 && at + 1 < pm.size() &&
                       pm.find('@', at + 1) == std::string::npos && pm.size() <= 254 &&
                       pm.find_first_of(" \t<>\"\\,;:()[]") == std::string::npos;
    if (!pm.empty() && !valid)
      error(e->mark(), join(path, "postmaster") + ": expected an address local@domain, got " + quote(pm));
    else if (l->protocol != Protocol::kSmtp)
      error(e->mark(), join(path, "postmaster") + ": only an smtp listener receives mail for <Postmaster>");
    else
      l->postmaster = pm;
  }
  // RFC 5321 §4.5.3.2: an SMTP server waits at least 5 minutes for the next command.
  if (!f.find("preauth_timeout") && (l->protocol == Protocol::kSmtp || l->protocol == Protocol::kSubmission))
    l->preauth_timeout = Duration(300000);
  if (l->max_line == 0) {
    switch (l->protocol) {
      case Protocol::kImap:
        l->max_line = 65536;  // as Dovecot's imap_max_line_length: holds any RFC 2971 ID
        break;
      case Protocol::kPop3:
      case Protocol::kSmtp:
      case Protocol::kSubmission:
        l->max_line = 512;
        break;
    }
  }
}

void Loader::loadDirectory(const Entry& section, DirectoryConfig* d) {
  const YAML::Node& n = section.value;
  const std::string path = "directory";
  Fields f;
  if (!fields(n, path, {"driver", "file", "postgres", "http", "cache"}, &f)) return;
  getEnum<std::string>(f, "driver", path, {{"file", "file"}, {"postgres", "postgres"}, {"http", "http"}},
                       &d->driver);
  if (const Entry* e = f.find("driver"); e && d->driver == "postgres" && !f.find("postgres"))
    error(e->mark(), "directory: driver postgres needs directory.postgres.conninfo");
  if (const Entry* e = f.find("driver"); e && d->driver == "http" && !f.find("http"))
    error(e->mark(), "directory: driver http needs directory.http.url");

  const Entry* file = f.find("file");
  if (file) {
    Fields ff;
    if (fields(file->value, "directory.file", {"users", "failure_delay"}, &ff)) {
      if (d->driver == "file") requireKey(ff, "users", file->mark(), "directory.file");
      getFile(ff, "users", "directory.file", &d->file.users);
      getDuration(ff, "failure_delay", "directory.file", &d->file.failure_delay, true);
    }
  } else if (d->driver == "file") {
    error(section.mark(), "directory: driver file needs directory.file.users");
  }
  if (const Entry* e = f.find("postgres")) {
    loadPostgres(e->value, "directory.postgres", &d->postgres);
    if (d->driver == "postgres" && d->postgres.conninfo.empty())
      error(e->mark(), "directory: driver postgres needs directory.postgres.conninfo");
  }
  if (const Entry* e = f.find("http")) {
    Fields hf;
    if (fields(e->value, "directory.http", {"url", "timeout"}, &hf)) {
      getString(hf, "url", "directory.http", &d->http.url);
      if (d->driver == "http") requireKey(hf, "url", e->mark(), "directory.http");
      if (const Entry* u = hf.find("url"); u && u->value.IsScalar() && d->http.url.rfind("http://", 0) != 0)
        error(u->mark(), "directory.http.url: expected an http:// URL (the auth_http service is reached in "
                         "plain HTTP, as nginx does), got " + quote(d->http.url));
      getDuration(hf, "timeout", "directory.http", &d->http.timeout, false);
    }
  }
  if (const Entry* e = f.find("cache")) {
    Fields cf;
    if (fields(e->value, "directory.cache", {"ttl", "negative_ttl"}, &cf)) {
      getDuration(cf, "ttl", "directory.cache", &d->cache.ttl, true);
      getDuration(cf, "negative_ttl", "directory.cache", &d->cache.negative_ttl, true);
    }
  }
}

void Loader::loadPostgres(const YAML::Node& n, const std::string& path, PostgresDirectoryConfig* p) {
  Fields f;
  if (!fields(n, path, {"conninfo", "pool", "timeout", "refresh", "default_scheme", "queries"}, &f)) return;
  getString(f, "conninfo", path, &p->conninfo);
  getNumber(f, "pool", path, 1, 1024, &p->pool);
  getDuration(f, "timeout", path, &p->timeout, false);
  getDuration(f, "refresh", path, &p->refresh, false);
  if (const Entry* e = f.find("default_scheme")) {
    std::string s;
    if (scalar(*e, join(path, "default_scheme"), "a password scheme", &s)) {
      const std::string u = ascii::upper(s);
      static constexpr std::string_view kSchemes[] = {"PLAIN",        "PLAIN-MD5", "MD5",     "SHA256-CRYPT",
                                                      "SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID"};
      if (std::find(std::begin(kSchemes), std::end(kSchemes), u) == std::end(kSchemes)) {
        error(e->mark(), join(path, "default_scheme") + ": unknown password scheme " + quote(s) +
                             " (PLAIN, PLAIN-MD5, MD5, SHA256-CRYPT, SHA512-CRYPT, BLF-CRYPT, ARGON2ID)");
      } else {
        p->default_scheme = u;
      }
    }
  }
  if (const Entry* e = f.find("queries")) {
    const std::string qpath = join(path, "queries");
    Fields qf;
    if (fields(e->value, qpath, {"password", "recipient", "domain", "sender", "route", "routes", "nodes"}, &qf)) {
      getString(qf, "password", qpath, &p->queries.password);
      getString(qf, "recipient", qpath, &p->queries.recipient);
      getString(qf, "domain", qpath, &p->queries.domain);
      getString(qf, "sender", qpath, &p->queries.sender);
      getString(qf, "route", qpath, &p->queries.route);
      getString(qf, "routes", qpath, &p->queries.routes);
      getString(qf, "nodes", qpath, &p->queries.nodes);
    }
  }
}

void Loader::loadBackends(const YAML::Node& n, Config* cfg) {
  if (n.IsNull()) return;
  if (!n.IsSequence()) {
    error(n, "backends: expected a list, got " + describe(n));
    return;
  }
  std::map<std::string, int> names;
  for (size_t i = 0; i < n.size(); ++i) {
    const YAML::Node item = n[i];
    const std::string path = indexed("backends", i);
    if (!item.IsMap()) {
      error(item, path + ": expected a map, got " + describe(item));
      continue;
    }
    BackendConfig b;
    loadBackend(item, path, &b);
    YAML::Node name_node;
    if (!b.name.empty() && findValue(item, "name", &name_node)) {
      const auto [it, inserted] = names.emplace(b.name, name_node.Mark().line + 1);
      if (!inserted) {
        error(name_node, path + ".name: duplicate backend name " + quote(b.name) +
                             " (first defined at line " + std::to_string(it->second) + ")");
        continue;
      }
    }
    cfg->backends.push_back(std::move(b));
  }
}

void Loader::loadBackend(const YAML::Node& n, const std::string& path, BackendConfig* b) {
  Fields f;
  if (!fields(n, path,
              {"name", "host", "ports", "tls", "tls_ca", "tls_verify", "tls_name", "login", "master_user",
               "master_password_file", "deliver", "health", "connect_timeout"},
              &f))
    return;
  requireKey(f, "name", n.Mark(), path);
  requireKey(f, "host", n.Mark(), path);
  requireKey(f, "ports", n.Mark(), path);
  getName(f, "name", path, &b->name);
  if (const Entry* e = f.find("host")) {
    std::string h;
    getString(f, "host", path, &h);
    if (e->value.IsScalar()) {
      ListenAddress numeric;
      const bool looks_ipv4 = !h.empty() && h.find_first_not_of("0123456789.") == std::string::npos;
      if (looks_ipv4 ? !parseListenAddress(h + ":1", &numeric, nullptr) : !isHostName(h) && !isIpv6Literal(h))
        error(e->mark(), join(path, "host") + ": " + quote(h) + " is not a host name, IPv4 or IPv6 address");
      else
        b->host = std::move(h);
    }
  }
  if (const Entry* e = f.find("ports")) {
    const std::string ppath = join(path, "ports");
    Fields pf;
    if (fields(e->value, ppath, {"imap", "pop3", "smtp", "lmtp"}, &pf)) {
      getPort(pf, "imap", ppath, &b->ports.imap);
      getPort(pf, "pop3", ppath, &b->ports.pop3);
      getPort(pf, "smtp", ppath, &b->ports.smtp);
      getPort(pf, "lmtp", ppath, &b->ports.lmtp);
      if (pf.entries.empty())
        error(e->mark(), ppath + ": at least one of imap, pop3, smtp, lmtp is required");
    }
  }
  getEnum<TlsMode>(
      f, "tls", path,
      {{"none", TlsMode::kNone}, {"starttls", TlsMode::kStarttls}, {"implicit", TlsMode::kImplicit}},
      &b->tls);
  getFile(f, "tls_ca", path, &b->tls_ca);
  getBool(f, "tls_verify", path, &b->tls_verify);
  getString(f, "tls_name", path, &b->tls_name);
  getEnum<std::string>(f, "login", path, {{"replay", "replay"}, {"master", "master"}}, &b->login);
  getString(f, "master_user", path, &b->master_user);
  getFile(f, "master_password_file", path, &b->master_password_file);
  if (b->login == "master") {
    const Entry* e = f.find("login");
    if (b->master_user.empty() || !f.find("master_password_file"))
      error(e->mark(), join(path, "login") + ": master needs master_user and master_password_file");
  } else {
    for (std::string_view key : {"master_user", "master_password_file"})
      if (const Entry* e = f.find(key))
        error(e->mark(), join(path, key) + ": only with login: master");
  }
  getEnum<std::string>(f, "deliver", path, {{"lmtp", "lmtp"}, {"smtp", "smtp"}}, &b->deliver);
  if (const Entry* e = f.find("health")) {
    const std::string hpath = join(path, "health");
    Fields hf;
    if (fields(e->value, hpath, {"interval", "timeout"}, &hf)) {
      getDuration(hf, "interval", hpath, &b->health.interval, false);
      getDuration(hf, "timeout", hpath, &b->health.timeout, false);
    }
  }
  getDuration(f, "connect_timeout", path, &b->connect_timeout, false);
}

void Loader::checkBackendRef(const Fields& f, std::string_view key, const std::string& path,
                             const Config& cfg) {
  const Entry* e = f.find(key);
  if (!e || !e->value.IsScalar()) return;
  const std::string& name = e->value.Scalar();
  if (!cfg.findBackend(name)) error(e->mark(), join(path, key) + ": unknown backend " + quote(name));
}

void Loader::loadRouting(const YAML::Node& n, Config* cfg) {
  Fields f;
  if (!fields(n, "routing", {"static", "submission_relay"}, &f)) return;
  if (const Entry* e = f.find("static")) {
    if (e->value.IsSequence()) {
      std::map<std::string, int> domains;
      for (size_t i = 0; i < e->value.size(); ++i) {
        const YAML::Node item = e->value[i];
        const std::string path = indexed("routing.static", i);
        if (!item.IsMap()) {
          error(item, path + ": expected a map, got " + describe(item));
          continue;
        }
        Fields rf;
        if (!fields(item, path, {"domain", "primary", "secondary"}, &rf)) continue;
        requireKey(rf, "domain", item.Mark(), path);
        requireKey(rf, "primary", item.Mark(), path);
        RouteConfig r;
        getString(rf, "primary", path, &r.primary, false);
        getString(rf, "secondary", path, &r.secondary);
        checkBackendRef(rf, "primary", path, *cfg);
        if (!r.secondary.empty()) checkBackendRef(rf, "secondary", path, *cfg);
        if (!r.secondary.empty() && r.secondary == r.primary)
          error(rf.find("secondary")->mark(), path + ".secondary: same backend as primary");
        if (const Entry* d = rf.find("domain")) {
          std::string domain;
          getString(rf, "domain", path, &domain, false);
          if (!domain.empty()) {
            domain = ascii::lower(domain);
            if (domain != "*" && !isHostName(domain)) {
              error(d->mark(), path + ".domain: " + quote(domain) + " is not a domain name or *");
            } else {
              const int line = d->value.Mark().line + 1;
              auto [it, inserted] = domains.emplace(domain, line);
              if (!inserted)
                error(d->mark(), path + ".domain: duplicate route for " + quote(domain) + " (first at line " +
                                     std::to_string(it->second) + ")");
              r.domain = std::move(domain);
            }
          }
        }
        cfg->routing.static_routes.push_back(std::move(r));
      }
    } else if (!e->value.IsNull()) {
      error(e->mark(), "routing.static: expected a list, got " + describe(e->value));
    }
  }
  getString(f, "submission_relay", "routing", &cfg->routing.submission_relay);
  if (!cfg->routing.submission_relay.empty()) checkBackendRef(f, "submission_relay", "routing", *cfg);
}

// A submission listener hands every message to routing.submission_relay.
void Loader::checkSubmissionRelay(const YAML::Node& root, const Config& cfg) {
  if (!cfg.routing.submission_relay.empty()) {
    if (const BackendConfig* b = cfg.findBackend(cfg.routing.submission_relay); b && b->ports.smtp == 0)
      error(root, "routing.submission_relay: backend " + quote(b->name) + " has no ports.smtp");
    return;
  }
  for (const auto& l : cfg.listeners) {
    if (l.protocol != Protocol::kSubmission) continue;
    YAML::Mark m = root.Mark();
    m.line = l.line - 1;
    m.column = l.column - 1;
    error(m, "listener " + quote(l.name) + ": protocol submission needs routing.submission_relay");
  }
}

// Finds where a second YAML document starts, without building it. yaml-cpp 0.7's
// LoadAll() never returns on input such as "," (the parser yields empty documents
// forever without consuming the token), so documents are counted here, at most two.
class SecondDocumentFinder : public YAML::EventHandler {
 public:
  // True when text holds more than one document; *where is the start of the second.
  static bool find(const std::string& text, YAML::Mark* where) {
    std::istringstream in(text);
    YAML::Parser parser(in);
    SecondDocumentFinder finder;
    if (!parser.HandleNextDocument(finder)) return false;
    if (!parser.HandleNextDocument(finder)) return false;
    *where = finder.second_;
    return true;
  }

  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents_ == 2) second_ = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
  }
  void OnMapEnd() override {}

 private:
  int documents_ = 0;
  YAML::Mark second_;
};

std::filesystem::path baseDirOf(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path.empty() ? std::string(".") : path, ec);
  if (ec) p = path;
  return p.lexically_normal().parent_path();
}

}  // namespace

LoadResult loadConfigText(const std::string& text, const std::string& path) {
  LoadResult result;
  try {
    Loader loader(path, baseDirOf(path));
    auto cfg = std::make_shared<Config>();
    cfg->path = path;
    try {
      const YAML::Node root = YAML::Load(text);
      YAML::Mark second;
      if (SecondDocumentFinder::find(text, &second)) {
        loader.error(second,
                     "unexpected content after the end of the document (only one YAML document is allowed)");
      } else if (root.IsNull()) {
        loader.error(YAML::Mark::null_mark(), "the configuration is empty");
      } else {
        loader.load(root, cfg.get());
      }
    } catch (const YAML::Exception& e) {
      loader.error(e.mark, e.msg);
    }
    result.errors = loader.takeErrors();
    if (result.errors.empty()) result.config = std::move(cfg);
  } catch (const std::bad_alloc&) {
    result.errors = {{path, 0, 0, "out of memory while loading the configuration"}};
  } catch (const std::exception& e) {
    result.errors = {
        {path, 0, 0, std::string("internal error while loading the configuration: ") + e.what()}};
  }
  return result;
}

LoadResult loadConfigFile(const std::string& path) {
  std::string why;
  if (!checkReadableFile(path, &why))
    return {nullptr, {{path, 0, 0, "cannot read the configuration: " + why}}};
  std::ifstream in(path, std::ios::binary);
  std::string text;
  std::vector<char> buf(64 * 1024);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    text.append(buf.data(), static_cast<size_t>(in.gcount()));
    if (static_cast<std::streamsize>(text.size()) > kMaxFileSize)
      return {nullptr, {{path, 0, 0, "the configuration is larger than 16 MiB"}}};
  }
  if (in.bad()) return {nullptr, {{path, 0, 0, "cannot read the configuration: I/O error"}}};
  return loadConfigText(text, path);
}

}  // namespace mailgate::conf
