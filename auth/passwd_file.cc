#include "auth/passwd_file.h"

#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "gateway/core/ascii.h"

namespace mailgate::auth {
namespace {

// Generous bound on one line: a line longer than this is reported, not loaded.
constexpr std::size_t kMaxLineLength = 16384;

std::string problem(const std::string& name, std::size_t line, std::string_view message) {
  std::string out = name;
  out += ':';
  out += std::to_string(line);
  out += ": ";
  out += message;
  return out;
}

bool validUserName(std::string_view user) {
  if (user.empty()) return false;
  for (unsigned char c : user)
    if (c <= 0x20 || c == 0x7f) return false;
  return true;
}

}  // namespace

PasswdFile::PasswdFile(Scheme default_scheme)
    : default_scheme_(default_scheme), snapshot_(std::make_shared<Snapshot>()) {}

PasswdLoadReport PasswdFile::load(const std::string& path) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    path_ = path;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    PasswdLoadReport report;
    report.problems.push_back(path + ": cannot open file");
    return report;
  }
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) {
    PasswdLoadReport report;
    report.problems.push_back(path + ": read error");
    return report;
  }
  return loadText(buf.str(), path);
}

PasswdLoadReport PasswdFile::reload() {
  std::string path;
  {
    std::lock_guard<std::mutex> lock(mu_);
    path = path_;
  }
  if (path.empty()) {
    PasswdLoadReport report;
    report.problems.push_back("passwd-file: reload before load");
    return report;
  }
  return load(path);
}

PasswdLoadReport PasswdFile::loadText(std::string_view text, const std::string& name) {
  PasswdLoadReport report;
  auto snap = std::make_shared<Snapshot>();
  std::map<Scheme, std::size_t> scheme_count;

  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

    if (line.size() > kMaxLineLength) {
      report.problems.push_back(problem(name, line_no, "line too long"));
      continue;
    }
    const std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') continue;

    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      report.problems.push_back(problem(name, line_no, "malformed line (expected user:password)"));
      continue;
    }
    const std::string_view user = line.substr(0, colon);
    if (!validUserName(user)) {
      report.problems.push_back(problem(name, line_no, "invalid user name"));
      continue;
    }
    std::string_view password = line.substr(colon + 1);
    password = password.substr(0, password.find(':'));  // uid:gid:gecos:home:shell:extra follow

    std::string key = ascii::lower(user);
    Entry entry;
    entry.user = std::string(user);
    auto parsed = parseStoredHash(password, default_scheme_);
    if (parsed) {
      entry.hash = std::move(parsed).value();
      entry.enabled = true;
    } else {
      report.problems.push_back(
          problem(name, line_no, parsed.error() + " (user " + entry.user + " disabled)"));
    }

    auto it = snap->users.find(key);
    if (it != snap->users.end()) {
      report.problems.push_back(
          problem(name, line_no, "duplicate user " + entry.user + " (first entry kept)"));
      continue;
    }
    if (entry.enabled) {
      ++snap->enabled;
      ++scheme_count[entry.hash.scheme];
    }
    if (const std::size_t at = key.rfind('@'); at != std::string::npos && at + 1 < key.size())
      snap->domains.insert(key.substr(at + 1));
    snap->users.emplace(std::move(key), std::move(entry));
  }

  // Unknown users are checked against a real entry of the file's most common scheme:
  // same algorithm, same cost parameters; the result is thrown away.
  Scheme common = default_scheme_;
  std::size_t best = 0;
  for (const auto& [scheme, count] : scheme_count) {
    if (count > best) {
      best = count;
      common = scheme;
    }
  }
  snap->dummy = StoredHash{Scheme::kPlain, "-"};
  for (const auto& [key, entry] : snap->users) {
    if (entry.enabled && entry.hash.scheme == common) {
      snap->dummy = entry.hash;
      break;
    }
  }

  report.loaded = true;
  report.users = snap->enabled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot_ = std::move(snap);
  }
  return report;
}

std::shared_ptr<const PasswdFile::Snapshot> PasswdFile::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

AuthResult PasswdFile::authenticate(std::string_view user, std::string_view password) {
  const auto snap = snapshot();
  AuthResult result;
  auto it = snap->users.find(ascii::lower(user));
  if (it == snap->users.end() || !it->second.enabled) {
    (void)verifyPassword(snap->dummy, password);  // same cost as a real check
    result.verdict = it == snap->users.end() ? Verdict::kUnknownUser : Verdict::kBadPassword;
    return result;
  }
  if (!verifyPassword(it->second.hash, password)) {
    result.verdict = Verdict::kBadPassword;
    return result;
  }
  result.verdict = Verdict::kOk;
  result.user = it->second.user;
  return result;
}

RecipientResult PasswdFile::recipient(std::string_view address) {
  const auto snap = snapshot();
  const std::string key = ascii::lower(address);
  const std::size_t at = key.rfind('@');
  if (at == std::string::npos || at + 1 >= key.size()) return RecipientResult::kUnknownMailbox;
  if (!snap->domains.contains(key.substr(at + 1))) return RecipientResult::kForeignDomain;
  return snap->users.contains(key) ? RecipientResult::kLocal : RecipientResult::kUnknownMailbox;
}

std::size_t PasswdFile::size() const { return snapshot()->enabled; }

}  // namespace mailgate::auth
