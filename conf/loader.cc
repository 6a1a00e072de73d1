// The YAML loader: text → yaml-cpp tree → typed structs of conf/config.h.
//
// Every problem is collected (up to kMaxErrors) with the line and column of the node
// it is about; nothing stops at the first error. yaml-cpp is used only here, and no
// exception leaves this file: the parser's exceptions become ConfigErrors.
#include <fcntl.h>
#include <re2/re2.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "conf/config.h"
#include "conf/icap_url.h"
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
  void getWritableDir(const Fields& f, std::string_view key, const std::string& path, std::string* out);
  void getName(const Fields& f, std::string_view key, const std::string& path, std::string* out);
  template <typename E>
  void getEnum(const Fields& f, std::string_view key, const std::string& path, EnumValues<E> values, E* out);

  // --- sections ------------------------------------------------------------------
  void loadServer(const YAML::Node& n, ServerConfig* s);
  void loadLog(const YAML::Node& n, LogConfig* l);
  void loadAdmin(const YAML::Node& n, AdminConfig* a);
  void loadQueue(const Entry& e, Config* cfg);
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
  // One scanner of each type: its keys into *sc; false when it is not usable (reported).
  bool loadClamdScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                        const HooksConfig& h, ScannerConfig* sc);
  bool loadIcapScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                       const HooksConfig& h, ScannerConfig* sc);
  bool loadMilterScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                         const HooksConfig& h, ScannerConfig* sc);
  bool loadDlpScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                      const HooksConfig& h, ScannerConfig* sc);
  void loadCommonScannerKeys(const Fields& f, const std::string& path, const HooksConfig& h, ScannerConfig* sc);
  void loadScannerEndpoints(const Fields& f, const std::string& path, ScannerConfig* sc);
  void loadQuarantine(const Entry& e, Config* cfg);
  void loadFlows(const Entry& section, Config* cfg);

  // --- policy: lists, geoip, limits, policies ----------------------------------------
  // Where a `when` is evaluated: a policy's stage, or the stage at which a limit's
  // count happens (errors: at any stage).
  enum class Stage : uint8_t { kConnect, kHelo, kAuth, kMail, kRcpt, kData, kAny };
  struct MatchContext {
    Stage stage;
    std::string label;  // "stage mail", "count messages (stage mail)"
  };
  bool items(const Entry& e, const std::string& path, const char* what, std::vector<YAML::Node>* out);
  void loadLists(const Entry& section, PolicyConfig* p);
  void loadList(const YAML::Node& key, const YAML::Node& value, ListConfig* l);
  void loadGeoip(const Entry& section, PolicyConfig* p);
  void loadGeoipDb(const Entry& e, const std::string& path, const char* default_field, GeoipDbConfig* db);
  void listRefs(const Entry& e, const std::string& path, const PolicyConfig& p, bool countries,
                std::vector<std::string>* out);
  void loadMatch(const Entry& e, const std::string& path, const Config& cfg, const MatchContext& ctx,
                 int depth, Match* m);
  void loadPatterns(const Entry& e, const std::string& path, std::vector<std::string>* out);
  void loadLimits(const Entry* section, Config* cfg);
  void loadLimitRule(const YAML::Node& n, const std::string& path, const Config& cfg, LimitRuleConfig* r);
  void loadOnExceed(const Entry& e, const std::string& path, LimitRuleConfig* r);
  void loadBans(const Entry& e, const Config& cfg, BanConfig* b);
  void loadEarlyTalker(const Entry& e, const Config& cfg, EarlyTalkerConfig* t);
  void loadPolicies(const Entry& section, Config* cfg);
  void loadPolicy(const YAML::Node& n, const std::string& path, const Config& cfg, PolicyRuleConfig* r);
  void checkReply(const Entry& e, const std::string& where, char klass);

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
  // Policies with then: quarantine (where, path), checked against hooks.quarantine
  // once the hooks are loaded (policies come first).
  std::vector<std::pair<YAML::Mark, std::string>> quarantine_rules_;
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

// --- sections --------------------------------------------------------------------

void Loader::load(const YAML::Node& root, Config* cfg) {
  Fields f;
  if (!fields(root, "",
              {"server", "log", "admin", "tls", "listeners", "directory", "backends", "routing", "lists",
               "geoip", "limits", "policies", "hooks", "queue"},
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
  // Lists before what names them; listeners and the directory before limits.
  if (const Entry* e = f.find("lists")) loadLists(*e, &cfg->policy);
  if (const Entry* e = f.find("geoip")) loadGeoip(*e, &cfg->policy);
  loadLimits(f.find("limits"), cfg);
  if (const Entry* e = f.find("policies")) loadPolicies(*e, cfg);
  if (const Entry* e = f.find("hooks")) loadHooks(e->value, cfg);
  if (const Entry* e = f.find("queue"))
    loadQueue(*e, cfg);
  else
    cfg->queue.store = cfg->directory.driver == "postgres" ? "postgres" : "none";
  if (cfg->hooks.quarantine.store.empty())
    for (const auto& [mark, rpath] : quarantine_rules_)
      error(mark, rpath + ": quarantine needs a store (hooks.quarantine.store: dir or postgres)");
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
  if (const Entry* e = f.find("quarantine")) loadQuarantine(*e, cfg);
}

void Loader::loadQuarantine(const Entry& e, Config* cfg) {
  const std::string path = "hooks.quarantine";
  Fields f;
  if (!fields(e.value, path, {"store", "dir", "retention"}, &f)) return;
  QuarantineConfig& q = cfg->hooks.quarantine;
  if (!f.find("store")) {
    if (!e.value.IsNull()) error(e.mark(), path + ": missing required key \"store\" (dir or postgres)");
    return;
  }
  getEnum<std::string>(f, "store", path, {{"dir", "dir"}, {"postgres", "postgres"}}, &q.store);
  getDuration(f, "retention", path, &q.retention, false);
  const Entry* store = f.find("store");
  const Entry* dir = f.find("dir");
  if (q.store == "postgres") {
    if (cfg->directory.driver != "postgres")
      error(store->mark(), join(path, "store") + ": postgres needs directory.driver postgres");
    if (dir) error(dir->key_node, join(path, "dir") + ": only with store: dir");
  } else if (q.store == "dir") {
    if (!dir) {
      error(store->mark(), join(path, "store") + ": dir needs hooks.quarantine.dir (a directory)");
      return;
    }
    getWritableDir(f, "dir", path, &q.dir);
  }
}

// A directory the gateway writes: absolute once loaded, existing and writable, or
// creatable (one level) in a writable parent.
void Loader::getWritableDir(const Fields& f, std::string_view key, const std::string& path, std::string* out) {
  const Entry* dir = f.find(key);
  if (!dir) return;
  std::string d;
  getString(f, key, path, &d, false);
  if (d.empty()) return;
  d = resolve(d);
  std::error_code ec;
  if (std::filesystem::exists(d, ec) && !std::filesystem::is_directory(d, ec)) {
    error(dir->mark(), join(path, key) + ": " + d + " is not a directory");
  } else if (std::filesystem::is_directory(d, ec)) {
    if (::access(d.c_str(), W_OK | X_OK) != 0) error(dir->mark(), join(path, key) + ": cannot write to " + d);
  } else {
    // Created at start (one level); its parent must exist and be writable.
    const std::string parent = std::filesystem::path(d).parent_path().string();
    if (!std::filesystem::is_directory(parent, ec) || ::access(parent.c_str(), W_OK | X_OK) != 0)
      error(dir->mark(), join(path, key) + ": " + d + " does not exist and cannot be created in " + parent);
  }
  *out = std::move(d);
}

void Loader::loadQueue(const Entry& e, Config* cfg) {
  const std::string path = "queue";
  Fields f;
  if (!fields(e.value, path,
              {"store", "dir", "max_entries", "max_size", "retry", "max_retry", "lifetime", "lease",
               "scan_interval"},
              &f))
    return;
  QueueConfig& q = cfg->queue;
  if (const Entry* store = f.find("store")) {
    getEnum<std::string>(f, "store", path, {{"none", "none"}, {"dir", "dir"}, {"postgres", "postgres"}}, &q.store);
    if (q.store == "postgres" && cfg->directory.driver != "postgres")
      error(store->mark(), join(path, "store") + ": postgres needs directory.driver postgres");
  } else {
    q.store = f.find("dir") ? "dir" : cfg->directory.driver == "postgres" ? "postgres" : "none";
  }
  const Entry* dir = f.find("dir");
  if (q.store == "dir") {
    if (!dir) error(e.mark(), join(path, "store") + ": dir needs queue.dir (a directory)");
    getWritableDir(f, "dir", path, &q.dir);
  } else if (dir) {
    error(dir->key_node, join(path, "dir") + ": only with store: dir");
  }
  uint32_t entries = static_cast<uint32_t>(q.max_entries);
  getNumber(f, "max_entries", path, 1, 100000000, &entries);
  q.max_entries = entries;
  if (const Entry* ms = f.find("max_size")) {
    std::string s;
    uint64_t v = 0;
    if (scalar(*ms, join(path, "max_size"), "a size", &s)) {
      if (!parseSize(s, &v) || v < (1u << 20))
        error(ms->mark(), join(path, "max_size") + ": invalid size " + quote(s) + " (at least 1M; use 512M or 4G)");
      else
        q.max_size = v;
    }
  }
  getDuration(f, "retry", path, &q.retry, false);
  getDuration(f, "max_retry", path, &q.max_retry, false);
  getDuration(f, "lifetime", path, &q.lifetime, false);
  getDuration(f, "lease", path, &q.lease, false);
  getDuration(f, "scan_interval", path, &q.scan_interval, false);
  if (q.max_retry < q.retry) q.max_retry = q.retry;
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
    sc.line = key.Mark().line + 1;
    sc.column = key.Mark().column + 1;
    bool ok = false;
    if (sc.type == "clamd")
      ok = loadClamdScanner(item, key, path, *h, &sc);
    else if (sc.type == "icap")
      ok = loadIcapScanner(item, key, path, *h, &sc);
    else if (sc.type == "milter")
      ok = loadMilterScanner(item, key, path, *h, &sc);
    else if (sc.type == "dlp")
      ok = loadDlpScanner(item, key, path, *h, &sc);
    else
      error(type_node, path + ".type: expected clamd, icap, milter or dlp, got " + quote(sc.type));
    if (!ok) continue;  // reported
    bad_scanners_.pop_back();
    h->scanners.push_back(std::move(sc));
  }
}

// The keys every scanner type has besides its own (list them in its fields() call):
// type, on_error, timeouts, max_size, on_oversize, breaker.
void Loader::loadCommonScannerKeys(const Fields& f, const std::string& path, const HooksConfig& h,
                                   ScannerConfig* sc) {
  if (f.find("on_error")) {
    HookAction a = h.on_error;
    getEnum<HookAction>(f, "on_error", path,
                        {{"accept", HookAction::kAccept}, {"tempfail", HookAction::kTempfail},
                         {"reject", HookAction::kReject}},
                        &a);
    sc->on_error = a;
  }
  if (const Entry* t = f.find("timeouts")) {
    const std::string tpath = join(path, "timeouts");
    Fields tf;
    if (fields(t->value, tpath, {"connect", "scan"}, &tf)) {
      if (tf.find("connect")) {
        Duration d = h.connect_timeout;
        getDuration(tf, "connect", tpath, &d, false);
        sc->connect_timeout = d;
      }
      if (tf.find("scan")) {
        Duration d = h.scan_timeout;
        getDuration(tf, "scan", tpath, &d, false);
        sc->scan_timeout = d;
      }
    }
  }
  if (f.find("max_size")) {
    uint32_t max_size = static_cast<uint32_t>(h.max_size);
    getSize(f, "max_size", path, 1024, 0xffffffffu, &max_size);
    sc->max_size = max_size;
  }
  if (f.find("on_oversize")) {
    OversizeAction a = h.on_oversize;
    getEnum<OversizeAction>(f, "on_oversize", path,
                            {{"accept_unscanned", OversizeAction::kAcceptUnscanned},
                             {"tempfail", OversizeAction::kTempfail},
                             {"reject", OversizeAction::kReject}},
                            &a);
    sc->on_oversize = a;
  }
  if (const Entry* b = f.find("breaker")) {
    const std::string bpath = join(path, "breaker");
    Fields bf;
    if (fields(b->value, bpath, {"failures", "open"}, &bf)) {
      getNumber(bf, "failures", bpath, 1, 1000, &sc->breaker_failures);
      getDuration(bf, "open", bpath, &sc->breaker_open, false);
    }
  }
}

bool Loader::loadIcapScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                             const HooksConfig& h, ScannerConfig* out) {
  ScannerConfig& sc = *out;
  Fields f;
  if (!fields(item, path,
              {"type", "on_error", "timeouts", "max_size", "on_oversize", "breaker", "url", "method", "on_modified"},
              &f))
    return false;
  loadCommonScannerKeys(f, path, h, &sc);
  requireKey(f, "url", key.Mark(), path);
  bool ok = false;
  if (const Entry* e = f.find("url")) {
    const std::string upath = join(path, "url");
    std::string text;
    if (scalar(*e, upath, "an icap:// URL", &text)) {
      IcapUrl parsed;
      std::string why;
      if (parseIcapUrl(text, &parsed, &why)) {
        sc.url = std::move(text);
        ok = true;
      } else {
        error(e->mark(), upath + ": " + quote(text) + ": " + why);
      }
    }
  }
  getEnum<std::string>(f, "method", path, {{"respmod", "respmod"}, {"reqmod", "reqmod"}}, &sc.method);
  getEnum<ModifiedAction>(f, "on_modified", path,
                          {{"accept", ModifiedAction::kAccept},
                           {"reject", ModifiedAction::kReject},
                           {"ignore", ModifiedAction::kIgnore}},
                          &sc.on_modified);
  return ok;
}

bool Loader::loadMilterScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                               const HooksConfig& h, ScannerConfig* sc) {
  Fields f;
  if (!fields(item, path,
              {"type", "on_error", "timeouts", "max_size", "on_oversize", "breaker", "endpoints", "endpoint"}, &f))
    return false;
  loadCommonScannerKeys(f, path, h, sc);
  // `endpoint: ADDRESS` (one, as the design's example writes it) or `endpoints: [...]`.
  if (const Entry* one = f.find("endpoint")) {
    const std::string epath = join(path, "endpoint");
    std::string text;
    ServiceEndpoint parsed;
    std::string why;
    if (f.find("endpoints")) {
      error(one->mark(), path + ": endpoint and endpoints together (use endpoints for a list)");
    } else if (scalar(*one, epath, "an address", &text)) {
      if (parseServiceEndpoint(text, &parsed, &why))
        sc->endpoints.push_back(std::move(text));
      else
        error(one->mark(), epath + ": " + quote(text) + ": " + why);
    }
    return !sc->endpoints.empty();  // else reported
  }
  requireKey(f, "endpoints", key.Mark(), path);
  loadScannerEndpoints(f, path, sc);
  return !sc->endpoints.empty();  // else reported
}

// The names of the built-in DLP patterns (filters/dlp.cc has their text).
constexpr std::string_view kDlpBuiltinPatterns[] = {"card_number", "iban"};

bool Loader::loadDlpScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                            const HooksConfig& h, ScannerConfig* out) {
  ScannerConfig& sc = *out;
  const size_t before = errors_.size();
  Fields f;
  if (!fields(item, path,
              {"type", "on_error", "timeouts", "max_size", "on_oversize", "breaker", "detectors", "on_match",
               "tag_header"},
              &f))
    return false;
  loadCommonScannerKeys(f, path, h, &sc);
  getEnum<DlpAction>(
      f, "on_match", path,
      {{"reject", DlpAction::kReject}, {"quarantine", DlpAction::kQuarantine}, {"tag", DlpAction::kTag}},
      &sc.on_match);
  if (const Entry* t = f.find("tag_header")) {
    const std::string tpath = join(path, "tag_header");
    std::string s;
    if (scalar(*t, tpath, "a header field \"Name: value\"", &s)) {
      const size_t colon = s.find(':');
      const bool name_ok = colon != std::string::npos && colon > 0 &&
                           std::all_of(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(colon),
                                       [](char c) { return c > 32 && c < 127; });
      const std::string_view value =
          colon == std::string::npos ? std::string_view() : std::string_view(s).substr(colon + 1);
      const bool value_ok = value.find_first_not_of(' ') != std::string_view::npos &&
                            std::none_of(value.begin(), value.end(), [](char c) {
                              return c == '\r' || c == '\n' || c == '\0' || (c > 0 && c < 32 && c != '\t');
                            });
      if (!name_ok || !value_ok || s.size() > 998)
        error(t->mark(),
              tpath +
                  ": expected a header field \"Name: value\" (printable name, one line, at most 998 "
                  "octets), got " +
                  quote(s));
      else
        sc.tag_header = std::move(s);
    }
  }
  requireKey(f, "detectors", key.Mark(), path);
  if (const Entry* e = f.find("detectors")) {
    const std::string dpath = join(path, "detectors");
    if (!e->value.IsSequence() || e->value.size() == 0) {
      error(e->mark(), dpath + ": expected a list of one or more detectors, got " +
                           (e->value.IsSequence() ? std::string("an empty list") : describe(e->value)));
    } else {
      for (size_t i = 0; i < e->value.size(); ++i) {
        const YAML::Node dn = e->value[i];
        const std::string ipath = indexed(dpath, i);
        if (!dn.IsMap()) {
          error(dn, ipath + ": expected a map, got " + describe(dn));
          continue;
        }
        Fields df;
        if (!fields(dn, ipath, {"id", "pattern", "validate", "context", "context_window", "min_count"}, &df))
          continue;
        DlpDetectorConfig d;
        d.line = dn.Mark().line + 1;
        d.column = dn.Mark().column + 1;
        requireKey(df, "id", dn.Mark(), ipath);
        requireKey(df, "pattern", dn.Mark(), ipath);
        getName(df, "id", ipath, &d.id);
        if (const Entry* id = df.find("id"); id && !d.id.empty()) {
          for (const DlpDetectorConfig& other : sc.detectors) {
            if (other.id == d.id) {
              error(id->mark(), join(ipath, "id") + ": duplicate detector id " + quote(d.id) +
                                    " (also at line " + std::to_string(other.line) + ")");
              break;
            }
          }
        }
        if (const Entry* p = df.find("pattern")) {
          const std::string ppath = join(ipath, "pattern");
          std::string s;
          if (scalar(*p, ppath, "a built-in pattern name or an RE2 pattern", &s)) {
            const bool builtin = std::find(std::begin(kDlpBuiltinPatterns), std::end(kDlpBuiltinPatterns),
                                           s) != std::end(kDlpBuiltinPatterns);
            if (s.empty()) {
              error(p->mark(), ppath + ": must not be empty");
            } else if (!builtin) {
              RE2::Options options;
              options.set_log_errors(false);
              const RE2 re(s, options);
              if (!re.ok())
                error(p->mark(), ppath + ": invalid pattern " + quote(s) + ": " + re.error() +
                                     " (or use a built-in pattern: card_number, iban)");
            }
            d.pattern = std::move(s);
          }
        }
        getEnum<std::string>(df, "validate", ipath, {{"luhn", "luhn"}, {"iban_mod97", "iban_mod97"}},
                             &d.validate);
        if (const Entry* c = df.find("context")) {
          const std::string cpath = join(ipath, "context");
          std::vector<YAML::Node> words;
          if (items(*c, cpath, "a word", &words)) {
            for (const YAML::Node& w : words) {
              std::string s;
              if (!scalar(w, cpath, "a word", &s)) continue;
              if (s.empty() || s.size() > 256 ||
                  s.find_first_of(std::string_view("\0\r\n", 3)) != std::string::npos) {
                error(w, cpath + ": " + quote(s) + ": a context word is 1 to 256 octets on one line");
                continue;
              }
              d.context.push_back(std::move(s));
            }
          }
        }
        getNumber(df, "context_window", ipath, 1, 4096, &d.context_window);
        getNumber(df, "min_count", ipath, 1, 10000, &d.min_count);
        sc.detectors.push_back(std::move(d));
      }
    }
  }
  return errors_.size() == before && !sc.detectors.empty();
}

bool Loader::loadClamdScanner(const YAML::Node& item, const YAML::Node& key, const std::string& path,
                              const HooksConfig& h, ScannerConfig* out) {
  ScannerConfig& sc = *out;
  {
    Fields f;
    if (!fields(item, path,
                {"type", "on_error", "timeouts", "max_size", "on_oversize", "breaker", "endpoints", "stream_max"}, &f))
      return false;
    loadCommonScannerKeys(f, path, h, &sc);
    if (f.find("stream_max")) {
      uint32_t stream_max = static_cast<uint32_t>(sc.stream_max);
      getSize(f, "stream_max", path, 1024, 0xffffffffu, &stream_max);
      sc.stream_max = stream_max;
    }
    requireKey(f, "endpoints", key.Mark(), path);
    loadScannerEndpoints(f, path, &sc);
  }
  return !sc.endpoints.empty();  // else reported
}

// endpoints: a list of unix:/path | tcp:HOST:PORT (clamd, milter).
void Loader::loadScannerEndpoints(const Fields& f, const std::string& path, ScannerConfig* out) {
  ScannerConfig& sc = *out;
  {
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
  if (!fields(n, path, {"threads", "shutdown_grace", "workers", "content_workers", "spool_dir", "spool_memory", "io",
                            "user", "group", "hostname"},
              &f))
    return;
  getEnum<IoBackend>(f, "io", path,
                     {{"auto", IoBackend::kAuto}, {"io_uring", IoBackend::kIoUring}, {"epoll", IoBackend::kEpoll}},
                     &s->io);
  getString(f, "user", path, &s->user);
  getString(f, "group", path, &s->group);
  if (const Entry* e = f.find("hostname")) {
    getString(f, "hostname", path, &s->hostname);
    bool ok = !s->hostname.empty() && s->hostname.size() <= 253;
    for (char c : s->hostname)
      ok = ok && (ascii::isAlpha(c) || ascii::isDigit(c) || c == '-' || c == '.');
    if (!ok) error(e->mark(), "server.hostname: expected a host name (letters, digits, '-', '.'), got " + quote(s->hostname));
  }
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
  if (!fields(n, "log", {"level", "format", "file"}, &f)) return;
  if (f.find("file")) {
    getString(f, "file", "log", &l->file);
    if (!l->file.empty()) l->file = resolve(l->file);
  }
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
  if (!fields(n, "admin", {"listen", "token_file"}, &f)) return;
  if (const Entry* e = f.find("token_file")) {
    getString(f, "token_file", "admin", &a->token_file);
    if (!a->token_file.empty()) {
      a->token_file = resolve(a->token_file);
      if (::access(a->token_file.c_str(), R_OK) != 0)
        error(e->mark(), "admin.token_file: cannot read " + a->token_file);
    }
  }
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
        auto at = [](const Entry* entry) {
          const YAML::Mark m = entry->mark();
          return Position{m.line >= 0 ? m.line + 1 : 0, m.column >= 0 ? m.column + 1 : 0};
        };
        if (const Entry* ce = cf.find("cert")) c.cert_pos = at(ce);
        if (const Entry* ke = cf.find("key")) c.key_pos = at(ke);
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
  if (!fields(n, path,
              {"name", "protocol", "listen", "tls", "proxy_protocol", "allow_plaintext_auth",
               "preauth_timeout", "idle_timeout", "max_line", "max_literal", "max_bad_commands",
               "max_auth_attempts", "max_message_size", "max_recipients", "max_messages", "greeting_delay", "banner",
               "sender_check", "postmaster", "append_limit"},
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
  if (const Entry* e = f.find("banner")) {
    getString(f, "banner", path, &l->banner);
    for (char c : l->banner)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        error(e->mark(), join(path, "banner") + ": must not contain control characters");
        break;
      }
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
  if (const Entry* e = f.find("append_limit")) {
    const std::string where = join(path, "append_limit");
    std::string s;
    uint64_t v = 0;
    if (!scalar(*e, where, "a size", &s)) {
      // reported
    } else if (!parseSize(s, &v) || v > (uint64_t{1} << 40)) {
      error(e->mark(), where + ": invalid size " + quote(s) + " (use 0 for none, or 512, 64K, 50M, 1G)");
    } else if (l->protocol != Protocol::kImap) {
      error(e->mark(), where + ": only an imap listener receives APPEND");
    } else {
      l->append_limit = v;
    }
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
  if (cfg.findBackend(name)) return;
  std::string defined;
  for (const auto& b : cfg.backends) defined += (defined.empty() ? "" : ", ") + b.name;
  error(e->mark(), join(path, key) + ": unknown backend " + quote(name) +
                       (defined.empty() ? " (no backends are defined)" : " (defined: " + defined + ")"));
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

// --- policy: lists, geoip, limits, policies ----------------------------------------

Position positionOf(const YAML::Mark& m) {
  return {m.line >= 0 ? m.line + 1 : 0, m.column >= 0 ? m.column + 1 : 0};
}

bool isSmtpFamily(Protocol p) { return p == Protocol::kSmtp || p == Protocol::kSubmission; }

const char* protocolName(Protocol p) {
  switch (p) {
    case Protocol::kImap:
      return "imap";
    case Protocol::kPop3:
      return "pop3";
    case Protocol::kSmtp:
      return "smtp";
    case Protocol::kSubmission:
      return "submission";
  }
  return "?";
}

const ListenerConfig* findListener(const Config& cfg, const std::string& name) {
  for (const auto& l : cfg.listeners)
    if (l.name == name) return &l;
  return nullptr;
}

// A header field for then: tag: "Name: value", printable ASCII (and tabs in the value).
bool isHeaderField(std::string_view s) {
  const size_t colon = s.find(':');
  if (colon == 0 || colon == std::string_view::npos || colon > 76 || s.size() > kMaxPolicyReply) return false;
  for (size_t i = 0; i < colon; ++i)
    if (s[i] < 33 || s[i] > 126) return false;
  for (size_t i = colon + 1; i < s.size(); ++i)
    if ((s[i] < 32 && s[i] != '\t') || static_cast<unsigned char>(s[i]) > 126) return false;
  return s.find_first_not_of(" \t", colon + 1) != std::string_view::npos;
}

// A path inside a MaxMind DB record: dot-separated names or array indexes.
bool isRecordPath(std::string_view s) {
  if (s.empty() || s.size() > 128 || s.front() == '.' || s.back() == '.' ||
      s.find("..") != std::string_view::npos)
    return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return ascii::isAlpha(c) || ascii::isDigit(c) || c == '_' || c == '-' || c == '.';
  });
}

// Whether fields() left a key of the map out (it reported it as unknown or repeated):
// a "missing key" then would only repeat that error.
bool droppedKeys(const YAML::Node& map, const Fields& f) {
  return map.IsMap() && f.entries.size() != map.size();
}

constexpr int kMaxNotDepth = 8;
constexpr Duration kMaxPolicyDelay{300000};  // a longer wait outlasts the clients' own timeouts

bool Loader::items(const Entry& e, const std::string& path, const char* what, std::vector<YAML::Node>* out) {
  if (e.value.IsScalar()) {
    out->push_back(e.value);
    return true;
  }
  if (e.value.IsSequence() && e.value.size() > 0) {
    for (size_t i = 0; i < e.value.size(); ++i) out->push_back(e.value[i]);
    return true;
  }
  error(e.mark(), path + ": expected " + what + " or a list of them, got " +
                      (e.value.IsSequence() ? std::string("an empty list") : describe(e.value)));
  return false;
}

void Loader::loadLists(const Entry& section, PolicyConfig* p) {
  const YAML::Node& n = section.value;
  if (n.IsNull()) return;
  if (!n.IsMap()) {
    error(section.mark(), "lists: expected a map of list names, got " + describe(n));
    return;
  }
  for (auto it = n.begin(); it != n.end(); ++it) {
    const YAML::Node key = it->first;
    if (!key.IsScalar() || !isValidName(key.Scalar())) {
      error(key, "lists: " + (key.IsScalar() ? quote(key.Scalar()) : describe(key)) +
                     " is not a valid list name (1 to " + std::to_string(kMaxNameLength) +
                     " characters among A-Z a-z 0-9 - _ .)");
      continue;
    }
    if (const ListConfig* first = p->findList(key.Scalar())) {
      error(key, "lists." + key.Scalar() + ": duplicate list name (first defined at line " +
                     std::to_string(first->pos.line) + ")");
      continue;
    }
    ListConfig l;
    loadList(key, it->second, &l);
    // Kept even when it has a problem, so that rules naming it are not reported too.
    p->lists.push_back(std::move(l));
  }
}

void Loader::loadList(const YAML::Node& key, const YAML::Node& value, ListConfig* l) {
  l->name = key.Scalar();
  l->pos = positionOf(key.Mark());
  const std::string path = join("lists", l->name);
  if (!value.IsMap()) {
    error(value.IsNull() ? key.Mark() : value.Mark(),
          path + ": expected a map with cidrs, file or countries, got " + describe(value));
    return;
  }
  Fields f;
  if (!fields(value, path, {"cidrs", "file", "countries"}, &f)) return;
  const Entry* cidrs = f.find("cidrs");
  const Entry* file = f.find("file");
  const Entry* countries = f.find("countries");
  if (!cidrs && !file && !countries) {
    if (droppedKeys(value, f)) return;
    error(key, path + ": needs cidrs and/or file (a network list), or countries (a country list)");
    return;
  }
  if (countries && (cidrs || file)) {
    const Entry* other = cidrs ? cidrs : file;
    error(other->key_node,
          path + ": a list holds networks (cidrs, file) or countries, not both; make two lists");
    return;
  }
  if (cidrs) {
    const std::string cpath = join(path, "cidrs");
    std::vector<YAML::Node> nodes;
    if (cidrs->value.IsSequence() && cidrs->value.size() == 0) {
      // an empty list of networks is allowed (it matches nothing)
    } else if (items(*cidrs, cpath, "a network", &nodes)) {
      for (size_t i = 0; i < nodes.size(); ++i) {
        std::string s, why;
        if (!scalar(nodes[i], indexed(cpath, i), "a network", &s)) continue;
        if (!checkCidr(s, &why)) {
          error(nodes[i], indexed(cpath, i) + ": " + quote(s) + ": " + why);
          continue;
        }
        l->cidrs.push_back(std::move(s));
      }
    }
  }
  // The file is read when the policy is built (and again on SIGHUP); here it must exist.
  getFile(f, "file", path, &l->file);
  if (countries) {
    const std::string cpath = join(path, "countries");
    std::vector<YAML::Node> nodes;
    if (items(*countries, cpath, "a country code", &nodes)) {
      for (size_t i = 0; i < nodes.size(); ++i) {
        std::string s;
        if (!scalar(nodes[i], indexed(cpath, i), "a country code", &s)) continue;
        if (s.size() != 2 || !ascii::isAlpha(s[0]) || !ascii::isAlpha(s[1])) {
          error(nodes[i],
                indexed(cpath, i) + ": " + quote(s) + " is not a two-letter country code (ISO 3166-1)");
          continue;
        }
        l->countries.push_back(ascii::upper(s));
      }
    }
  }
}

void Loader::loadGeoip(const Entry& section, PolicyConfig* p) {
  Fields f;
  if (!fields(section.value, "geoip", {"country", "asn"}, &f)) return;
  if (const Entry* e = f.find("country"))
    loadGeoipDb(*e, "geoip.country", "country.iso_code", &p->geoip.country);
  if (const Entry* e = f.find("asn")) loadGeoipDb(*e, "geoip.asn", "autonomous_system_number", &p->geoip.asn);
}

void Loader::loadGeoipDb(const Entry& e, const std::string& path, const char* default_field,
                         GeoipDbConfig* db) {
  db->pos = positionOf(e.key_node.Mark());
  db->field = default_field;
  if (e.value.IsNull()) {
    error(e.key_node, path + ": missing required key \"mmdb\"");
    return;
  }
  Fields f;
  if (!fields(e.value, path, {"mmdb", "field"}, &f)) return;
  requireKey(f, "mmdb", e.mark(), path);
  if (const Entry* m = f.find("mmdb")) {
    const std::string mpath = join(path, "mmdb");
    std::vector<YAML::Node> nodes;
    if (items(*m, mpath, "a database file", &nodes)) {
      for (size_t i = 0; i < nodes.size(); ++i) {
        std::string s, why;
        if (!scalar(nodes[i], indexed(mpath, i), "a file name", &s)) continue;
        if (s.empty() || s.find('\0') != std::string::npos) {
          error(nodes[i], indexed(mpath, i) + ": expected a file name, got " + quote(s));
          continue;
        }
        const std::string resolved = resolve(s);
        if (!checkReadableFile(resolved, &why)) {
          error(nodes[i], indexed(mpath, i) + ": cannot read " + resolved + ": " + why);
          continue;
        }
        db->mmdb.push_back(resolved);
      }
    }
  }
  if (const Entry* fe = f.find("field")) {
    std::string s;
    if (scalar(*fe, join(path, "field"), "a record path", &s)) {
      if (!isRecordPath(s))
        error(fe->mark(),
              join(path, "field") + ": " + quote(s) +
                  " is not a record path (names and indexes joined by dots, such as country.iso_code)");
      else
        db->field = std::move(s);
    }
  }
}

// Names of lists of one kind, each of which must exist.
void Loader::listRefs(const Entry& e, const std::string& path, const PolicyConfig& p, bool countries,
                      std::vector<std::string>* out) {
  std::vector<YAML::Node> nodes;
  if (!items(e, path, "a list name", &nodes)) return;
  for (const YAML::Node& node : nodes) {
    std::string s;
    if (!scalar(node, path, "a list name", &s)) continue;
    const ListConfig* l = p.findList(s);
    if (!l) {
      error(node, path + ": unknown list " + quote(s));
      continue;
    }
    const bool is_countries = !l->countries.empty();
    if (is_countries != countries) {
      error(node, path + ": list " + quote(s) +
                      (is_countries ? " is a country list, not a network list"
                                    : " is a network list, not a country list"));
      continue;
    }
    if (std::find(out->begin(), out->end(), s) == out->end()) out->push_back(std::move(s));
  }
}

void Loader::loadPatterns(const Entry& e, const std::string& path, std::vector<std::string>* out) {
  Fields f;
  if (e.value.IsNull() || !e.value.IsMap()) {
    error(e.mark(), path + ": expected { re2: PATTERN } or { re2: [PATTERNS] }, got " + describe(e.value));
    return;
  }
  if (!fields(e.value, path, {"re2"}, &f)) return;
  const Entry* r = f.find("re2");
  if (!r) {
    if (!droppedKeys(e.value, f)) error(e.mark(), path + ": missing required key \"re2\"");
    return;
  }
  const std::string rpath = join(path, "re2");
  std::vector<YAML::Node> nodes;
  if (!items(*r, rpath, "a pattern", &nodes)) return;
  for (const YAML::Node& node : nodes) {
    std::string s;
    if (!scalar(node, rpath, "a pattern", &s)) continue;
    RE2::Options options;
    options.set_log_errors(false);
    const RE2 re(s, options);
    if (!re.ok()) {
      error(node, rpath + ": invalid pattern " + quote(s) + ": " + re.error());
      continue;
    }
    out->push_back(std::move(s));
  }
}

void Loader::loadMatch(const Entry& e, const std::string& path, const Config& cfg, const MatchContext& ctx,
                       int depth, Match* m) {
  m->pos = positionOf(e.mark());
  Fields f;
  if (!fields(e.value, path,
              {"listener", "protocol", "client.net", "country", "asn", "tls", "authenticated", "user", "helo",
               "sender", "rcpt", "header", "attachment.filename", "not"},
              &f))
    return;
  const Stage st = ctx.stage;
  const bool any = st == Stage::kAny;
  // The SMTP-only conditions and stages.
  bool smtp_only = st == Stage::kHelo || st == Stage::kMail || st == Stage::kRcpt || st == Stage::kData;
  for (const Entry& c : f.entries) {
    const std::string cpath = join(path, c.key);
    // When the condition has a value at this stage: why not, or nullptr.
    const char* unknown_when = nullptr;
    if (c.key == "tls" && st == Stage::kConnect) {
      unknown_when = "from stage helo on (TLS is not negotiated before)";
    } else if (c.key == "authenticated" && st == Stage::kConnect) {
      unknown_when = "from stage helo on";
    } else if (c.key == "user" && (st == Stage::kConnect || st == Stage::kHelo)) {
      unknown_when = "from stage auth on";
    } else if (c.key == "helo" && (any || st == Stage::kConnect)) {
      unknown_when = "from stage helo on, on smtp listeners";
    } else if (c.key == "sender" && (any || st < Stage::kMail)) {
      unknown_when = "at stages mail, rcpt and data";
    } else if (c.key == "rcpt" && (any || st < Stage::kRcpt)) {
      unknown_when = "at stages rcpt and data";
    } else if ((c.key == "header" || c.key == "attachment.filename") && st != Stage::kData) {
      unknown_when = "at stage data only";
    }
    if (unknown_when) {
      error(c.key_node,
            cpath + ": " + c.key + " is not known at " + ctx.label + " (it is, " + unknown_when + ")");
      continue;
    }
    if (c.key == "helo") smtp_only = true;
  }
  for (const Entry& c : f.entries) {
    const std::string cpath = join(path, c.key);
    if (c.key == "listener") {
      std::vector<YAML::Node> nodes;
      if (!items(c, cpath, "a listener name", &nodes)) continue;
      for (const YAML::Node& node : nodes) {
        std::string s;
        if (!scalar(node, cpath, "a listener name", &s)) continue;
        const ListenerConfig* l = findListener(cfg, s);
        if (!l) {
          error(node, cpath + ": unknown listener " + quote(s));
          continue;
        }
        if (depth == 0 && smtp_only && !isSmtpFamily(l->protocol)) {
          error(node, cpath + ": listener " + quote(s) + " is an " + protocolName(l->protocol) +
                          " listener; " + ctx.label + " exists on smtp and submission listeners only");
          continue;
        }
        m->listeners.push_back(std::move(s));
      }
    } else if (c.key == "protocol") {
      std::vector<YAML::Node> nodes;
      if (!items(c, cpath, "a protocol", &nodes)) continue;
      for (const YAML::Node& node : nodes) {
        std::string s;
        if (!scalar(node, cpath, "a protocol", &s)) continue;
        if (s != "imap" && s != "pop3" && s != "smtp" && s != "submission") {
          error(node, cpath + ": expected one of imap, pop3, smtp, submission, got " + quote(s));
          continue;
        }
        if (depth == 0 && smtp_only && (s == "imap" || s == "pop3")) {
          error(node, cpath + ": " + ctx.label + " exists on smtp and submission listeners only, not " + s);
          continue;
        }
        m->protocols.push_back(std::move(s));
      }
    } else if (c.key == "client.net") {
      Fields nf;
      if (c.value.IsNull() || !c.value.IsMap()) {
        error(c.mark(), cpath + ": expected { in: LIST } or { in: [LISTS] }, got " + describe(c.value));
        continue;
      }
      if (!fields(c.value, cpath, {"in"}, &nf)) continue;
      if (const Entry* in = nf.find("in"))
        listRefs(*in, join(cpath, "in"), cfg.policy, false, &m->client_net_in);
      else
        error(c.mark(), cpath + ": missing required key \"in\"");
    } else if (c.key == "country") {
      if (!cfg.policy.geoip.country.configured()) {
        error(c.key_node, cpath + ": needs a country database (geoip.country)");
        continue;
      }
      if (c.value.IsMap()) {
        Fields nf;
        if (!fields(c.value, cpath, {"in"}, &nf)) continue;
        if (const Entry* in = nf.find("in"))
          listRefs(*in, join(cpath, "in"), cfg.policy, true, &m->country_lists);
        else
          error(c.mark(), cpath + ": missing required key \"in\"");
        continue;
      }
      std::vector<YAML::Node> nodes;
      if (!items(c, cpath, "a country code", &nodes)) continue;
      for (const YAML::Node& node : nodes) {
        std::string s;
        if (!scalar(node, cpath, "a country code", &s)) continue;
        if (s.size() != 2 || !ascii::isAlpha(s[0]) || !ascii::isAlpha(s[1])) {
          error(node, cpath + ": " + quote(s) + " is not a two-letter country code (or use { in: LIST })");
          continue;
        }
        m->country_in.push_back(ascii::upper(s));
      }
    } else if (c.key == "asn") {
      if (!cfg.policy.geoip.asn.configured()) {
        error(c.key_node, cpath + ": needs an AS number database (geoip.asn)");
        continue;
      }
      std::vector<YAML::Node> nodes;
      if (!items(c, cpath, "an AS number", &nodes)) continue;
      for (const YAML::Node& node : nodes) {
        std::string s;
        uint64_t v = 0;
        if (!scalar(node, cpath, "an AS number", &s)) continue;
        if (!parseUnsigned(s, &v) || v == 0 || v > 0xffffffffu) {
          error(node, cpath + ": expected an AS number from 1 to 4294967295, got " + quote(s));
          continue;
        }
        m->asn.push_back(static_cast<uint32_t>(v));
      }
    } else if (c.key == "tls" || c.key == "authenticated") {
      bool b = false;
      const size_t before = errors_.size();
      getBool(f, c.key, path, &b);
      if (errors_.size() == before) (c.key == "tls" ? m->tls : m->authenticated) = b;
    } else if (c.key == "user") {
      std::vector<YAML::Node> nodes;
      if (!items(c, cpath, "a user name", &nodes)) continue;
      for (const YAML::Node& node : nodes) {
        std::string s;
        if (!scalar(node, cpath, "a user name", &s)) continue;
        if (s.empty() || s.size() > 320 ||
            std::any_of(s.begin(), s.end(), [](char ch) { return static_cast<unsigned char>(ch) <= 0x20; })) {
          error(node, cpath + ": " + quote(s) + " is not a user name");
          continue;
        }
        m->users.push_back(ascii::lower(s));
      }
    } else if (c.key == "helo") {
      loadPatterns(c, cpath, &m->helo_re2);
    } else if (c.key == "sender") {
      loadPatterns(c, cpath, &m->sender_re2);
    } else if (c.key == "rcpt") {
      loadPatterns(c, cpath, &m->rcpt_re2);
    } else if (c.key == "header") {
      loadPatterns(c, cpath, &m->header_re2);
    } else if (c.key == "attachment.filename") {
      loadPatterns(c, cpath, &m->attachment_re2);
    } else if (c.key == "not") {
      if (depth + 1 >= kMaxNotDepth) {
        error(c.key_node, cpath + ": \"not\" nested more than " + std::to_string(kMaxNotDepth) + " deep");
        continue;
      }
      if (!c.value.IsMap()) {
        error(c.mark(), cpath + ": expected a map of conditions, got " + describe(c.value));
        continue;
      }
      auto inner = std::make_shared<Match>();
      loadMatch(c, cpath, cfg, ctx, depth + 1, inner.get());
      m->negated = std::move(inner);
    }
  }
}

void Loader::checkReply(const Entry& e, const std::string& where, char klass) {
  std::string s, why;
  if (!scalar(e, where, "a reply", &s)) return;
  if (!checkPolicyReply(s, klass, &why)) error(e.mark(), where + ": " + quote(s) + " " + why);
}

void Loader::loadLimits(const Entry* section, Config* cfg) {
  LimitsConfig& l = cfg->policy.limits;
  bool rules_given = false;
  if (section) {
    l.present = true;
    l.pos = positionOf(section->key_node.Mark());
    const std::string path = "limits";
    Fields f;
    if (fields(section->value, path,
               {"defaults", "rules", "bans", "early_talker", "line_timeout", "user_sessions"}, &f)) {
      if (const Entry* e = f.find("defaults")) {
        const std::string dpath = join(path, "defaults");
        Fields df;
        if (fields(e->value, dpath, {"ipv4_prefix", "ipv6_prefix", "exempt", "max_keys"}, &df)) {
          uint32_t v4 = l.ipv4_prefix, v6 = l.ipv6_prefix;
          getNumber(df, "ipv4_prefix", dpath, 0, 32, &v4);
          getNumber(df, "ipv6_prefix", dpath, 0, 128, &v6);
          l.ipv4_prefix = static_cast<uint8_t>(v4);
          l.ipv6_prefix = static_cast<uint8_t>(v6);
          if (const Entry* x = df.find("exempt")) {
            if (!(x->value.IsSequence() && x->value.size() == 0))
              listRefs(*x, join(dpath, "exempt"), cfg->policy, false, &l.exempt);
          }
          getNumber(df, "max_keys", dpath, 1000, 100000000, &l.max_keys);
        }
      }
      if (const Entry* e = f.find("rules")) {
        rules_given = true;
        if (e->value.IsSequence()) {
          std::map<std::string, int> names;
          for (size_t i = 0; i < e->value.size(); ++i) {
            const YAML::Node item = e->value[i];
            const std::string rpath = indexed("limits.rules", i);
            if (!item.IsMap()) {
              error(item, rpath + ": expected a map, got " + describe(item));
              continue;
            }
            LimitRuleConfig r;
            loadLimitRule(item, rpath, *cfg, &r);
            YAML::Node name_node;
            if (!r.name.empty() && findValue(item, "name", &name_node)) {
              const auto [it, inserted] = names.emplace(r.name, name_node.Mark().line + 1);
              if (!inserted)
                error(name_node, rpath + ".name: duplicate rule name " + quote(r.name) +
                                     " (first defined at line " + std::to_string(it->second) + ")");
            }
            l.rules.push_back(std::move(r));
          }
        } else if (!e->value.IsNull()) {
          error(e->mark(), "limits.rules: expected a list, got " + describe(e->value));
        }
      }
      if (const Entry* e = f.find("bans")) loadBans(*e, *cfg, &l.bans);
      if (const Entry* e = f.find("early_talker")) loadEarlyTalker(*e, *cfg, &l.early_talker);
      getDuration(f, "line_timeout", path, &l.line_timeout, true);
      getNumber(f, "user_sessions", path, 0, 100000, &l.max_user_sessions);
    }
  }
  // No rules given (or no limits section): the built-in defaults. `rules: []` turns
  // them off.
  if (!rules_given) l.rules = builtinLimitRules();
}

void Loader::loadLimitRule(const YAML::Node& n, const std::string& path, const Config& cfg,
                           LimitRuleConfig* r) {
  r->pos = positionOf(n.Mark());
  Fields f;
  if (!fields(n, path,
              {"name", "when", "count", "key", "concurrency", "rate", "burst", "distinct_credentials",
               "on_exceed", "scope"},
              &f))
    return;
  requireKey(f, "name", n.Mark(), path);
  getName(f, "name", path, &r->name);
  const size_t before_count = errors_.size();
  getEnum<CountKind>(f, "count", path,
                     {{"connections", CountKind::kConnections},
                      {"auth_failures", CountKind::kAuthFailures},
                      {"errors", CountKind::kErrors},
                      {"messages", CountKind::kMessages},
                      {"recipients", CountKind::kRecipients},
                      {"bytes", CountKind::kBytes}},
                     &r->count);
  const bool count_ok = errors_.size() == before_count;
  MatchContext ctx{Stage::kConnect, ""};
  switch (r->count) {
    case CountKind::kConnections:
      ctx = {Stage::kConnect, "count connections (stage connect)"};
      break;
    case CountKind::kAuthFailures:
      ctx = {Stage::kAuth, "count auth_failures (stage auth)"};
      break;
    case CountKind::kErrors:
      ctx = {Stage::kAny, "count errors (any stage)"};
      break;
    case CountKind::kMessages:
      ctx = {Stage::kMail, "count messages (stage mail)"};
      break;
    case CountKind::kRecipients:
      ctx = {Stage::kRcpt, "count recipients (stage rcpt)"};
      break;
    case CountKind::kBytes:
      ctx = {Stage::kData, "count bytes (stage data)"};
      break;
  }
  if (const Entry* e = f.find("key")) {
    const std::string kpath = join(path, "key");
    std::vector<YAML::Node> nodes;
    if (items(*e, kpath, "a key part", &nodes)) {
      r->key.clear();
      for (const YAML::Node& node : nodes) {
        std::string s;
        if (!scalar(node, kpath, "a key part", &s)) continue;
        static constexpr std::pair<std::string_view, KeyPart> kParts[] = {
            {"client.net", KeyPart::kClientNet},       {"client.ip", KeyPart::kClientIp},
            {"listener", KeyPart::kListener},          {"user", KeyPart::kUser},
            {"sender.domain", KeyPart::kSenderDomain}, {"rcpt.domain", KeyPart::kRcptDomain}};
        const auto* part =
            std::find_if(std::begin(kParts), std::end(kParts), [&](const auto& p) { return p.first == s; });
        if (part == std::end(kParts)) {
          error(node, kpath +
                          ": expected one of client.net, client.ip, listener, user, sender.domain, "
                          "rcpt.domain, got " +
                          quote(s));
          continue;
        }
        // The stage from which the part has a value.
        const Stage st = ctx.stage;
        const char* known_when = nullptr;
        if (part->second == KeyPart::kUser && (st == Stage::kConnect))
          known_when = "from stage auth on";
        else if (part->second == KeyPart::kSenderDomain && (st == Stage::kAny || st < Stage::kMail))
          known_when = "at stages mail, rcpt and data";
        else if (part->second == KeyPart::kRcptDomain && (st == Stage::kAny || st < Stage::kRcpt))
          known_when = "at stages rcpt and data";
        if (known_when && count_ok) {
          error(node, kpath + ": " + s + " is not known at " + ctx.label + " (it is, " + known_when + ")");
          continue;
        }
        if (std::find(r->key.begin(), r->key.end(), part->second) != r->key.end()) {
          error(node, kpath + ": " + s + " is listed twice");
          continue;
        }
        r->key.push_back(part->second);
      }
    }
  }
  if (const Entry* e = f.find("when")) {
    if (count_ok) loadMatch(*e, join(path, "when"), cfg, ctx, 0, &r->when);
  }
  getNumber(f, "concurrency", path, 1, 1000000, &r->concurrency);
  if (const Entry* e = f.find("concurrency"); e && count_ok && r->count != CountKind::kConnections)
    error(e->key_node, join(path, "concurrency") + ": only with count: connections");
  if (const Entry* e = f.find("rate")) {
    std::string s, why;
    if (scalar(*e, join(path, "rate"), "a rate N/PERIOD", &s) && !parseRate(s, &r->rate, &r->per, &why))
      error(e->mark(), join(path, "rate") + ": " + quote(s) + ": " + why);
  }
  getNumber(f, "burst", path, 1, 1000000000, &r->burst);
  if (const Entry* e = f.find("burst"); e && !f.find("rate"))
    error(e->key_node, join(path, "burst") + ": only with a rate");
  getBool(f, "distinct_credentials", path, &r->distinct_credentials);
  if (const Entry* e = f.find("distinct_credentials"); e && count_ok && r->count != CountKind::kAuthFailures)
    error(e->key_node, join(path, "distinct_credentials") + ": only with count: auth_failures");
  if (const Entry* e = f.find("on_exceed")) loadOnExceed(*e, join(path, "on_exceed"), r);
  if (const Entry* e = f.find("scope")) {
    getEnum<bool>(f, "scope", path, {{"node", false}, {"cluster", true}}, &r->cluster);
    if (r->cluster && cfg.directory.driver != "postgres")
      error(e->mark(), join(path, "scope") +
                           ": cluster counters are shared through PostgreSQL; it needs "
                           "directory.driver postgres");
  }
  if (!f.find("rate") && !f.find("concurrency"))
    error(n.Mark(), path + ": needs a rate or a concurrency (or both)");
}

void Loader::loadOnExceed(const Entry& e, const std::string& path, LimitRuleConfig* r) {
  const auto action = [](const std::string& s, LimitAction* out) {
    static constexpr std::pair<std::string_view, LimitAction> kActions[] = {
        {"tempfail", LimitAction::kTempfail},
        {"reject", LimitAction::kReject},
        {"delay", LimitAction::kDelay},
        {"ban", LimitAction::kBan}};
    for (const auto& [name, value] : kActions) {
      if (s == name) {
        *out = value;
        return true;
      }
    }
    return false;
  };
  if (e.value.IsScalar()) {
    if (!action(e.value.Scalar(), &r->on_exceed))
      error(e.mark(),
            path + ": expected one of tempfail, reject, delay, ban, got " + quote(e.value.Scalar()));
    return;
  }
  Fields f;
  if (e.value.IsNull() || !e.value.IsMap()) {
    error(e.mark(),
          path +
              ": expected tempfail, reject, delay, ban or a map { action: ..., delay: ..., reply: ... }, "
              "got " +
              describe(e.value));
    return;
  }
  if (!fields(e.value, path, {"action", "delay", "reply"}, &f)) return;
  const Entry* a = f.find("action");
  if (!a) {
    error(e.mark(), path + ": missing required key \"action\"");
    return;
  }
  std::string name;
  if (!scalar(*a, join(path, "action"), "an action", &name)) return;
  if (!action(name, &r->on_exceed)) {
    error(a->mark(),
          join(path, "action") + ": expected one of tempfail, reject, delay, ban, got " + quote(name));
    return;
  }
  if (const Entry* d = f.find("delay")) {
    std::string s, why;
    if (r->on_exceed != LimitAction::kDelay) {
      error(d->key_node, join(path, "delay") + ": only with action: delay");
    } else if (scalar(*d, join(path, "delay"), "a delay such as 2s..15s", &s)) {
      if (!parseDelayRange(s, &r->delay_min, &r->delay_max, &why))
        error(d->mark(), join(path, "delay") + ": " + quote(s) + ": " + why);
      else if (r->delay_max > kMaxPolicyDelay)
        error(d->mark(), join(path, "delay") + ": " + quote(s) + ": at most 5m");
    }
  }
  if (const Entry* rep = f.find("reply")) {
    const std::string rpath = join(path, "reply");
    if (r->on_exceed == LimitAction::kTempfail || r->on_exceed == LimitAction::kReject) {
      checkReply(*rep, rpath, r->on_exceed == LimitAction::kTempfail ? '4' : '5');
      if (rep->value.IsScalar()) r->reply = rep->value.Scalar();
    } else {
      error(rep->key_node, rpath + ": only with action tempfail or reject");
    }
  }
}

void Loader::loadBans(const Entry& e, const Config& cfg, BanConfig* b) {
  const std::string path = "limits.bans";
  Fields f;
  if (!fields(e.value, path, {"ttl", "increment", "forget", "never"}, &f)) return;
  getDuration(f, "ttl", path, &b->ttl, false);
  if (const Entry* inc = f.find("increment")) {
    const std::string ipath = join(path, "increment");
    Fields inf;
    if (fields(inc->value, ipath, {"factor", "max"}, &inf)) {
      if (const Entry* fe = inf.find("factor")) {
        std::string s;
        if (scalar(*fe, join(ipath, "factor"), "a number", &s)) {
          char* end = nullptr;
          errno = 0;
          const double v = s.empty() ? 0 : std::strtod(s.c_str(), &end);
          if (s.empty() || errno != 0 || *end != '\0' || !(v >= 1 && v <= 100))
            error(fe->mark(), join(ipath, "factor") + ": expected a number from 1 to 100, got " + quote(s));
          else
            b->factor = v;
        }
      }
      getDuration(inf, "max", ipath, &b->max, false);
    }
  }
  getDuration(f, "forget", path, &b->forget, true);
  if (b->max < b->ttl) {
    const Entry* where = f.find("increment");
    error(where ? where->mark() : e.mark(),
          path + ": increment.max (" + std::to_string(b->max.count() / 1000) + "s) is shorter than ttl (" +
              std::to_string(b->ttl.count() / 1000) + "s)");
  }
  if (const Entry* x = f.find("never"))
    if (!(x->value.IsSequence() && x->value.size() == 0))
      listRefs(*x, join(path, "never"), cfg.policy, false, &b->never);
}

void Loader::loadEarlyTalker(const Entry& e, const Config& cfg, EarlyTalkerConfig* t) {
  const std::string path = "limits.early_talker";
  t->pos = positionOf(e.key_node.Mark());
  Fields f;
  if (!fields(e.value, path, {"listeners", "greet_wait", "action"}, &f)) return;
  if (e.value.IsNull()) return;
  requireKey(f, "listeners", e.mark(), path);
  if (const Entry* l = f.find("listeners")) {
    const std::string lpath = join(path, "listeners");
    std::vector<YAML::Node> nodes;
    if (items(*l, lpath, "a listener name", &nodes)) {
      for (const YAML::Node& node : nodes) {
        std::string s;
        if (!scalar(node, lpath, "a listener name", &s)) continue;
        const ListenerConfig* lc = findListener(cfg, s);
        if (!lc) {
          error(node, lpath + ": unknown listener " + quote(s));
        } else if (!isSmtpFamily(lc->protocol)) {
          error(node, lpath + ": listener " + quote(s) + " is an " + protocolName(lc->protocol) +
                          " listener; only smtp and submission clients wait for a greeting to talk");
        } else {
          t->listeners.push_back(std::move(s));
        }
      }
    }
  }
  getDuration(f, "greet_wait", path, &t->greet_wait, false);
  if (t->greet_wait > kMaxPolicyDelay)
    error(f.find("greet_wait")->mark(), join(path, "greet_wait") + ": at most 5m");
  getEnum<LimitAction>(
      f, "action", path,
      {{"reject", LimitAction::kReject}, {"tempfail", LimitAction::kTempfail}, {"ban", LimitAction::kBan}},
      &t->action);
}

void Loader::loadPolicies(const Entry& section, Config* cfg) {
  const YAML::Node& n = section.value;
  if (n.IsNull()) return;
  if (!n.IsSequence()) {
    error(section.mark(), "policies: expected a list, got " + describe(n));
    return;
  }
  std::map<std::string, int> names;
  for (size_t i = 0; i < n.size(); ++i) {
    const YAML::Node item = n[i];
    const std::string path = indexed("policies", i);
    if (!item.IsMap()) {
      error(item, path + ": expected a map, got " + describe(item));
      continue;
    }
    PolicyRuleConfig r;
    loadPolicy(item, path, *cfg, &r);
    YAML::Node name_node;
    if (!r.name.empty() && findValue(item, "name", &name_node)) {
      const auto [it, inserted] = names.emplace(r.name, name_node.Mark().line + 1);
      if (!inserted)
        error(name_node, path + ".name: duplicate policy name " + quote(r.name) + " (first defined at line " +
                             std::to_string(it->second) + ")");
    }
    cfg->policy.policies.push_back(std::move(r));
  }
}

void Loader::loadPolicy(const YAML::Node& n, const std::string& path, const Config& cfg,
                        PolicyRuleConfig* r) {
  r->pos = positionOf(n.Mark());
  Fields f;
  if (!fields(n, path, {"name", "stage", "when", "then", "reply", "delay", "header", "mode"}, &f)) return;
  requireKey(f, "name", n.Mark(), path);
  requireKey(f, "stage", n.Mark(), path);
  requireKey(f, "then", n.Mark(), path);
  getName(f, "name", path, &r->name);

  static constexpr std::pair<std::string_view, Stage> kStages[] = {
      {"connect", Stage::kConnect}, {"helo", Stage::kHelo}, {"auth", Stage::kAuth},
      {"mail", Stage::kMail},       {"rcpt", Stage::kRcpt}, {"data", Stage::kData}};
  std::optional<Stage> stage;
  if (const Entry* e = f.find("stage")) {
    std::string s;
    if (scalar(*e, join(path, "stage"), "a stage", &s)) {
      const auto* it =
          std::find_if(std::begin(kStages), std::end(kStages), [&](const auto& p) { return p.first == s; });
      if (it == std::end(kStages)) {
        error(e->mark(), join(path, "stage") +
                             ": expected one of connect, helo, auth, mail, rcpt, data, got " + quote(s));
      } else {
        stage = it->second;
        r->stage = s;
      }
    }
  }

  const size_t before_then = errors_.size();
  getEnum<PolicyAction>(f, "then", path,
                        {{"accept", PolicyAction::kAccept},
                         {"reject", PolicyAction::kReject},
                         {"tempfail", PolicyAction::kTempfail},
                         {"delay", PolicyAction::kDelay},
                         {"tag", PolicyAction::kTag},
                         {"quarantine", PolicyAction::kQuarantine}},
                        &r->then);
  const Entry* then = f.find("then");
  const bool then_ok = then && errors_.size() == before_then;
  if (then_ok && r->then == PolicyAction::kQuarantine && stage && *stage != Stage::kData)
    error(then->mark(), join(path, "then") + ": quarantine holds a message, so only at stage data");
  else if (then_ok && r->then == PolicyAction::kQuarantine)
    quarantine_rules_.emplace_back(then->mark(), join(path, "then"));
  else if (then_ok && r->then == PolicyAction::kTag && stage && *stage != Stage::kData)
    error(then->mark(), join(path, "then") + ": tag adds a header field, so only at stage data");

  if (const Entry* e = f.find("when"); e && stage)
    loadMatch(*e, join(path, "when"), cfg, {*stage, "stage " + r->stage}, 0, &r->when);

  if (const Entry* e = f.find("reply"); e && then_ok) {
    const std::string rpath = join(path, "reply");
    if (r->then == PolicyAction::kTempfail || r->then == PolicyAction::kReject) {
      checkReply(*e, rpath, r->then == PolicyAction::kTempfail ? '4' : '5');
      if (e->value.IsScalar()) r->reply = e->value.Scalar();
    } else if (r->then != PolicyAction::kQuarantine) {
      error(e->key_node, rpath + ": then: " + then->value.Scalar() +
                             " sends no reply of its own (a reply goes with tempfail or reject)");
    }
  }
  if (const Entry* e = f.find("delay"); e && then_ok) {
    if (r->then != PolicyAction::kDelay) {
      error(e->key_node, join(path, "delay") + ": only with then: delay");
    } else {
      getDuration(f, "delay", path, &r->delay, false);
      if (r->delay > kMaxPolicyDelay) error(e->mark(), join(path, "delay") + ": at most 5m");
    }
  } else if (then_ok && r->then == PolicyAction::kDelay) {
    error(then->mark(), join(path, "then") + ": delay needs a delay (such as delay: 5s)");
  }
  if (const Entry* e = f.find("header"); e && then_ok) {
    std::string s;
    if (r->then != PolicyAction::kTag) {
      error(e->key_node, join(path, "header") + ": only with then: tag");
    } else if (scalar(*e, join(path, "header"), "a header field \"Name: value\"", &s)) {
      if (!isHeaderField(s))
        error(e->mark(), join(path, "header") +
                             ": expected a header field \"Name: value\" (printable ASCII, at most " +
                             std::to_string(kMaxPolicyReply) + " octets), got " + quote(s));
      else
        r->header = std::move(s);
    }
  }
  if (then_ok && r->then == PolicyAction::kTag && r->header.empty())
    r->header = "X-Mailgate-Policy: " + r->name;
  getEnum<bool>(f, "mode", path, {{"enforce", false}, {"shadow", true}}, &r->shadow);
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
    result.partial = cfg;
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
