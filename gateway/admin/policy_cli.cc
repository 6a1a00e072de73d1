#include "gateway/admin/policy_cli.h"

#include <fnmatch.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "conf/config.h"
#include "filters/message_body.h"
#include "filters/policy/policy.h"
#include "gateway/core/hostname.h"
#include "gateway/session/verdict_render.h"

namespace mailgate::admin {

namespace {

using filters::Action;
using filters::Stage;


struct OfflineSession {
  std::string listener, client, helo, user, from, message_file;
  std::vector<std::string> rcpts;
};

struct Outcome {
  Stage stage = Stage::kConnect;
  std::string action = "accept";  // accept | reject | tempfail | close | quarantine
  std::string reply;              // what the client reads (empty for accept)
  std::vector<std::string> notes;  // delays, added header fields
};

std::string newRef() {
  static std::mt19937 rng{std::random_device{}()};
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06x", static_cast<unsigned>(rng() & 0xffffff));
  return buf;
}

bool readFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// The message as the gateway would spool it: CRLF line ends.
std::string toCrlf(const std::string& in) {
  std::string out;
  out.reserve(in.size() + in.size() / 32);
  for (size_t i = 0; i < in.size(); i++) {
    if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r')) out += '\r';
    out += in[i];
  }
  return out;
}

const char* protocolOf(conf::Protocol p) {
  switch (p) {
    case conf::Protocol::kImap:
      return "imap";
    case conf::Protocol::kPop3:
      return "pop3";
    case conf::Protocol::kSmtp:
    case conf::Protocol::kSubmission:
      return "smtp";
  }
  return "smtp";
}

std::string outcomeAction(const filters::Verdict& v) {
  switch (v.action) {
    case Action::kReply:
      return v.code >= 500 ? "reject" : "tempfail";
    case Action::kReject:
      return "reject";
    case Action::kTempfail:
      return "tempfail";
    case Action::kClose:
      return "close";
    case Action::kQuarantine:
      return "quarantine";
    case Action::kContinue:
    case Action::kPending:
    case Action::kDelay:
    case Action::kAddHeader:
      return "accept";
  }
  return "accept";
}

// Runs the stages of one session through a dry-run policy filter. false + *error
// when the session cannot be described (unknown listener, bad address, no file).
bool runOffline(const std::shared_ptr<const filters::policy::Policy>& policy, const OfflineSession& s,
                filters::policy::Trace* trace, Outcome* out, std::string* error) {
  const conf::Config& cfg = policy->config();
  const conf::ListenerConfig* listener = nullptr;
  for (const auto& l : cfg.listeners)
    if (l.name == s.listener) listener = &l;
  if (!listener) {
    std::string names;
    for (const auto& l : cfg.listeners) names += (names.empty() ? "" : ", ") + l.name;
    *error = "unknown listener \"" + s.listener + "\" (the listeners are: " + names + ")";
    return false;
  }
  filters::policy::NetAddr addr;
  if (!filters::policy::parseAddr(s.client, &addr)) {
    *error = "not an IP address: \"" + s.client + "\"";
    return false;
  }
  filters::SessionFacts f;
  f.session_id = "offline";
  f.listener = listener->name;
  f.protocol = protocolOf(listener->protocol);
  f.submission = listener->protocol == conf::Protocol::kSubmission;
  f.client_ip = s.client;
  f.local_ip = "127.0.0.1";
  f.secured = listener->tls == conf::TlsMode::kImplicit;
  const bool smtp = f.protocol == "smtp";
  if (!smtp && (!s.helo.empty() || !s.from.empty() || !s.rcpts.empty() || !s.message_file.empty())) {
    *error = "helo, from, rcpt and message are for smtp listeners only";
    return false;
  }
  if (!s.message_file.empty()) {
    std::string text;
    if (!readFile(s.message_file, &text)) {
      *error = "cannot read the message " + s.message_file + ": " + std::strerror(errno);
      return false;
    }
    f.message = std::make_shared<filters::StringBody>(toCrlf(text));
  }

  auto filter = filters::policy::makeDryRunFilter(policy, f, trace);
  const std::string host = cfg.server.hostname.empty() ? core::hostName() : cfg.server.hostname;
  auto render = [&](const filters::Verdict& v, Stage st) {
    filters::Verdict r = v;
    if (!v.text.empty() && !filters::cleanReplyText(v.text, &r.text)) r.text.clear();
    r.ref = newRef();
    if (f.protocol == "imap") return session::renderImap(r, st, "a1").line;
    if (f.protocol == "pop3") return session::renderPop3(r, st).line;
    return session::renderSmtp(r, st, host).line;
  };
  // Runs one stage; true when the session goes on.
  auto stage = [&](Stage st) {
    if (!(filter->stages() & filters::stageBit(st))) return true;
    filters::Verdict v = filter->onStage(st, f, filters::Resumer{});
    if (v.action == Action::kDelay) {
      out->notes.push_back(std::string(filters::stageName(st)) + ": delay " + std::to_string(v.delay.count()) +
                           " ms");
      return true;
    }
    if (v.action == Action::kAddHeader) {
      out->notes.push_back(std::string(filters::stageName(st)) + ": header \"" + v.header + "\" added");
      return true;
    }
    if (!filters::isTerminal(v.action)) return true;
    out->stage = st;
    out->action = outcomeAction(v);
    if (v.action != Action::kQuarantine) out->reply = render(v, st);
    return false;
  };

  out->stage = Stage::kConnect;
  if (!stage(Stage::kConnect)) return true;
  if (smtp) {
    f.helo = s.helo.empty() ? "client.invalid" : s.helo;
    out->stage = Stage::kHelo;
    if (!stage(Stage::kHelo)) return true;
  }
  if (!s.user.empty()) {
    f.user = s.user;
    out->stage = Stage::kAuth;
    if (!stage(Stage::kAuth)) return true;
    f.authenticated = true;  // offline, the password is taken as right
    filters::Event ev;
    ev.kind = filters::EventKind::kAuthSuccess;
    (void)ev;  // the per-user session limit counts live sessions: none offline
  }
  if (!smtp) return true;
  if (!s.from.empty() || !s.rcpts.empty() || f.message) {
    f.from = s.from == "<>" ? std::string() : s.from;
    f.mail_path = "<" + *f.from + ">";
    out->stage = Stage::kMail;
    if (!stage(Stage::kMail)) return true;
    for (const auto& r : s.rcpts) {
      f.rcpt = r;
      out->stage = Stage::kRcpt;
      if (!stage(Stage::kRcpt)) return true;
      f.rcpts.push_back("<" + r + ">");
    }
    f.rcpt.clear();
    if (f.message) {
      out->stage = Stage::kData;
      if (!stage(Stage::kData)) return true;
    }
  }
  return true;
}

std::shared_ptr<const filters::policy::Policy> loadPolicy(const std::string& path) {
  auto loaded = conf::loadConfigFile(path);
  if (!loaded.errors.empty()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.format().c_str());
    return nullptr;
  }
  std::vector<conf::ConfigError> errors;
  std::vector<std::string> warnings;
  auto policy = filters::policy::Policy::compile(*loaded.config, nullptr, &errors, &warnings);
  for (const auto& e : errors) std::fprintf(stderr, "%s\n", e.format().c_str());
  for (const auto& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  return policy;
}

void printTrace(const filters::policy::Trace& trace) {
  bool first = true;
  Stage current = Stage::kClose;
  for (const auto& t : trace) {
    if (first || t.stage != current) {
      std::printf("%s\n", std::string(filters::stageName(t.stage)).c_str());
      current = t.stage;
      first = false;
    }
    std::string label = t.kind;
    if (!t.name.empty()) label += " " + t.name;
    std::printf("  %-34s %-9s %s\n", label.c_str(), t.matched ? "MATCH" : "no", t.detail.c_str());
  }
}

}  // namespace

int explainMain(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: mailgate --explain FILE --listener L --client IP [--helo H] [--from A] [--rcpt B]...\n"
                 "                [--user U] [--message FILE.eml]\n");
    return 2;
  }
  const std::string path = argv[2];
  OfflineSession s;
  for (int i = 3; i < argc; i++) {
    std::string opt = argv[i];
    std::string val;
    if (const size_t eq = opt.find('='); opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt.resize(eq);
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      std::fprintf(stderr, "mailgate --explain: %s needs a value\n", opt.c_str());
      return 2;
    }
    if (opt == "--listener")
      s.listener = val;
    else if (opt == "--client")
      s.client = val;
    else if (opt == "--helo")
      s.helo = val;
    else if (opt == "--from")
      s.from = val;
    else if (opt == "--rcpt")
      s.rcpts.push_back(val);
    else if (opt == "--user")
      s.user = val;
    else if (opt == "--message")
      s.message_file = val;
    else {
      std::fprintf(stderr, "mailgate --explain: unknown option %s\n", opt.c_str());
      return 2;
    }
  }
  if (s.listener.empty() || s.client.empty()) {
    std::fprintf(stderr, "mailgate --explain: --listener and --client are required\n");
    return 2;
  }
  auto policy = loadPolicy(path);
  if (!policy) return 1;
  filters::policy::Trace trace;
  Outcome out;
  std::string error;
  if (!runOffline(policy, s, &trace, &out, &error)) {
    std::fprintf(stderr, "mailgate --explain: %s\n", error.c_str());
    return 1;
  }
  printTrace(trace);
  for (const auto& n : out.notes) std::printf("note: %s\n", n.c_str());
  if (out.action == "accept")
    std::printf("result: accept (no ban, limit or rule refuses this session)\n");
  else
    std::printf("result: %s at %s: %s\n", out.action.c_str(), std::string(filters::stageName(out.stage)).c_str(),
                out.reply.c_str());
  return 0;
}

int testPolicyMain(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: mailgate --test-policy FILE CASES.yaml\n");
    return 2;
  }
  auto policy = loadPolicy(argv[2]);
  if (!policy) return 1;
  const std::string cases_path = argv[3];
  std::string dir = ".";
  if (const size_t slash = cases_path.rfind('/'); slash != std::string::npos) dir = cases_path.substr(0, slash);
  YAML::Node root;
  try {
    root = YAML::LoadFile(cases_path);
  } catch (const YAML::Exception& e) {
    std::fprintf(stderr, "%s:%d:%d: %s\n", cases_path.c_str(), e.mark.line + 1, e.mark.column + 1, e.msg.c_str());
    return 1;
  }
  if (!root.IsSequence()) {
    std::fprintf(stderr, "%s: the cases must be a list\n", cases_path.c_str());
    return 1;
  }
  unsigned passed = 0, failed = 0;
  for (const auto& c : root) {
    const std::string where = cases_path + ":" + std::to_string(c.Mark().line + 1);
    std::string name = c["name"] ? c["name"].as<std::string>("") : where;
    std::string problem;
    OfflineSession s;
    std::string exp_stage, exp_action, exp_reply;
    try {
      const YAML::Node sess = c["session"];
      const YAML::Node exp = c["expect"];
      if (!sess || !sess.IsMap()) problem = "no session";
      if (!exp || !exp.IsMap()) problem = "no expect";
      if (problem.empty()) {
        for (const auto& kv : sess) {
          const std::string k = kv.first.as<std::string>();
          if (k == "listener")
            s.listener = kv.second.as<std::string>();
          else if (k == "client")
            s.client = kv.second.as<std::string>();
          else if (k == "helo")
            s.helo = kv.second.as<std::string>();
          else if (k == "user")
            s.user = kv.second.as<std::string>();
          else if (k == "from")
            s.from = kv.second.as<std::string>();
          else if (k == "rcpt") {
            if (kv.second.IsSequence())
              for (const auto& r : kv.second) s.rcpts.push_back(r.as<std::string>());
            else
              s.rcpts.push_back(kv.second.as<std::string>());
          } else if (k == "message") {
            s.message_file = kv.second.as<std::string>();
            if (!s.message_file.empty() && s.message_file[0] != '/') s.message_file = dir + "/" + s.message_file;
          } else {
            problem = "unknown session key \"" + k + "\"";
          }
        }
        for (const auto& kv : exp) {
          const std::string k = kv.first.as<std::string>();
          if (k == "stage")
            exp_stage = kv.second.as<std::string>();
          else if (k == "action")
            exp_action = kv.second.as<std::string>();
          else if (k == "reply")
            exp_reply = kv.second.as<std::string>();
          else
            problem = "unknown expect key \"" + k + "\"";
        }
      }
    } catch (const YAML::Exception& e) {
      problem = e.msg;
    }
    Outcome out;
    std::string error;
    if (problem.empty()) {
      filters::policy::Trace trace;
      if (!runOffline(policy, s, &trace, &out, &error)) problem = error;
    }
    if (problem.empty()) {
      if (!exp_action.empty() && exp_action != out.action)
        problem = "expected action " + exp_action + ", got " + out.action;
      else if (!exp_stage.empty() && out.action != "accept" && exp_stage != filters::stageName(out.stage))
        problem = "expected stage " + exp_stage + ", got " + std::string(filters::stageName(out.stage));
      else if (!exp_reply.empty() && fnmatch(exp_reply.c_str(), out.reply.c_str(), 0) != 0)
        problem = "expected reply \"" + exp_reply + "\", got \"" + out.reply + "\"";
    }
    if (problem.empty()) {
      passed++;
      std::printf("ok    %s\n", name.c_str());
    } else {
      failed++;
      std::printf("FAIL  %s (%s): %s\n", name.c_str(), where.c_str(), problem.c_str());
    }
  }
  std::printf("%u passed, %u failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace mailgate::admin
