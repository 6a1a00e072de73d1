"""The command line's help and look-ups: --help/-h, --opt=value, --auth-test, --route,
--dump-config, --check-config's certificate checks and positions, the man page."""

import os
import pty
import re
import select
import shutil
import subprocess
import unittest
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[2]


def _pos(text: str, needle: str) -> tuple[int, int]:
    i = text.index(needle)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([harness.mailgate_bin(), *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=60)


class CliLookupTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-cli-lookup-"))
        ca = harness.make_ca(cls.dir / "certs")
        cls.cert = harness.make_cert(ca, cls.dir / "certs", ["mail.example.org"])
        cls.other = harness.make_cert(ca, cls.dir / "certs", ["other.example.org"])
        cls.users = harness.write_passwd(cls.dir / "users.passwd",
                                         {"alice@example.org": "alicepw", "bob@example.net": "bobpw"},
                                         "SHA512-CRYPT")
        imap, pop3, smtp = harness.free_ports(3)
        cls.text = harness.mailgate_config(
            certificates=[cls.cert], users_file=cls.users,
            listeners=[{"name": "imaps", "protocol": "imap", "port": imap, "tls": "implicit"},
                       {"name": "pop3s", "protocol": "pop3", "port": pop3, "tls": "implicit"},
                       {"name": "mx", "protocol": "smtp", "port": smtp, "tls": "none"}],
            backends=[{"name": "storage-01", "imap": 1143, "pop3": 1110, "lmtp": 1024},
                      {"name": "storage-02", "imap": 2143, "pop3": 2110, "lmtp": 2024},
                      {"name": "storage-03", "imap": 3143, "pop3": 3110, "lmtp": 3024}],
            routes=[{"domain": "example.org", "primary": "storage-01", "secondary": "storage-02"},
                    {"domain": "example.net", "primary": "storage-02"}])
        cls.config = cls.write("mailgate.yaml", cls.text)
        # The same with a default route.
        cls.with_default = cls.write("default.yaml", cls.text.replace(
            '    - { domain: "example.net"',
            '    - { domain: "*", primary: "storage-03", secondary: "storage-01" }\n'
            '    - { domain: "example.net"'))

    @classmethod
    def tearDownClass(cls):
        harness.remove_workdir(cls.dir)

    @classmethod
    def write(cls, name: str, text: str) -> str:
        p = cls.dir / name
        p.write_text(text)
        return str(p)

    # --- help and option forms -------------------------------------------------

    def test_help_on_stdout(self):
        for flag in ("--help", "-h"):
            r = run(flag)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, "")
            for cmd in ("--config FILE", "--check-config", "--dump-config", "--init-db", "--auth-test",
                        "--route", "--bans", "--ban", "--unban", "--quarantine", "--release", "--delete",
                        "--explain", "--test-policy", "--version", "--help"):
                self.assertIn(cmd, r.stdout, flag)

    def test_usage_error_on_stderr(self):
        for args in ((), ("--bogus",), ("--config",), ("--version", "extra"), ("--bans=x",)):
            r = run(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertEqual(r.stdout, "", args)
            self.assertIn("usage: mailgate", r.stderr, args)

    def test_option_equals_value(self):
        r = run(f"--check-config={self.config}")
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        r = run(f"--config={self.config}", "--route=alice@example.org")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("storage-01", r.stdout)
        r = run(f"--config={self.config}", "--auth-test=alice@example.org", stdin="alicepw\n")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run(f"--dump-config={self.config}")
        self.assertEqual(r.returncode, 0, r.stderr)
        # A value is never split: --reason's text keeps its '='.
        r = run("--config", self.config, "--ban", "192.0.2.1", "--ttl=1h", "--reason", "a=b")
        self.assertEqual(r.returncode, 1)  # no admin.listen: refused, but parsed
        self.assertIn("admin.listen is not configured", r.stderr)

    # --- --auth-test -------------------------------------------------------------

    def auth(self, user: str, password: str, *extra: str):
        return run("--config", self.config, "--auth-test", user, *extra, stdin=password + "\n")

    def test_auth_test_right_password(self):
        r = self.auth("alice@example.org", "alicepw")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^ok: alice@example.org$")
        self.assertRegex(r.stdout, r"(?m)^primary: storage-01 ")
        self.assertIn("listener imaps", r.stdout)
        self.assertNotIn("alicepw", r.stdout + r.stderr)
        self.assertNotIn("{", r.stderr)  # no JSON log lines

    def test_auth_test_wrong_password(self):
        r = self.auth("alice@example.org", "nope")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^failed: wrong password")
        self.assertNotIn("nope", r.stdout + r.stderr)

    def test_auth_test_unknown_user(self):
        r = self.auth("carol@example.org", "x")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^failed: unknown user")

    def test_auth_test_listener_and_no_password(self):
        r = self.auth("alice@example.org", "alicepw", "--listener", "pop3s")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("listener pop3s", r.stdout)
        r = self.auth("alice@example.org", "alicepw", "--listener", "nosuch")
        self.assertEqual(r.returncode, 2)
        self.assertIn("defined: imaps, pop3s, mx", r.stderr)
        r = run("--config", self.config, "--auth-test", "alice@example.org", stdin="")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("no password", r.stderr)

    def test_auth_test_prompts_with_echo_off(self):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal is its standard input and output
            os.execv(harness.mailgate_bin(),
                     [harness.mailgate_bin(), "--config", self.config, "--auth-test", "alice@example.org"])
        out = b""

        def read_until(needle: bytes):
            nonlocal out
            while needle not in out:
                r, _, _ = select.select([fd], [], [], 30)
                if not r:
                    self.fail(f"no {needle!r} in {out!r}")
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk

        read_until(b"Password: ")
        os.write(fd, b"alicepw\n")
        read_until(b"ok: ")
        read_until(b"failover order")
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, out)
        self.assertNotIn(b"alicepw", out, "the password was echoed")

    def test_auth_test_temporary_failure(self):
        # The http driver with nobody listening: a temporary failure, exit 3.
        (port,) = harness.free_ports(1)
        text = self.text.replace("directory:\n  driver: file\n",
                                 f"directory:\n  driver: http\n  http: {{ url: \"http://127.0.0.1:{port}/auth\" }}\n")
        self.assertNotEqual(text, self.text)
        path = self.write("http.yaml", text)
        r = run("--config", path, "--auth-test", "alice@example.org", stdin="alicepw\n")
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"(?m)^temporary failure: ")

    # --- --route -----------------------------------------------------------------

    def route(self, path: str, address: str):
        return run("--config", path, "--route", address)

    def test_route_static_primary_secondary(self):
        r = self.route(self.config, "alice@EXAMPLE.org")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('route: routing.static, domain "example.org"', r.stdout)
        self.assertRegex(r.stdout, r"(?m)^primary: storage-01 \(127\.0\.0\.1: imap 1143, pop3 1110, lmtp 1024\)$")
        self.assertRegex(r.stdout, r"(?m)^secondary: storage-02 ")
        self.assertRegex(r.stdout, r"(?m)^failover order: storage-01, storage-02$")
        self.assertIn("directory: a local mailbox", r.stdout)
        self.assertIn("health: not probed", r.stdout)
        r = self.route(self.config, "bob@example.net")
        self.assertRegex(r.stdout, r"(?m)^failover order: storage-02$")
        self.assertIn("secondary: none", r.stdout)

    def test_route_default_and_unknown_domain(self):
        r = self.route(self.with_default, "someone@elsewhere.example")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('the default route "*" (no entry for domain "elsewhere.example")', r.stdout)
        self.assertRegex(r.stdout, r"(?m)^failover order: storage-03, storage-01$")
        self.assertIn("not a local domain", r.stdout)
        r = self.route(self.config, "someone@elsewhere.example")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn('route: none: no routing.static entry for domain "elsewhere.example"', r.stdout)
        r = self.route(self.config, "nobody@example.org")
        self.assertIn("no such mailbox", r.stdout)

    # --- --dump-config -----------------------------------------------------------

    def test_dump_config_round_trips_and_shows_defaults(self):
        r = run("--dump-config", self.config)
        self.assertEqual(r.returncode, 0, r.stderr)
        dump = r.stdout
        for section in ("server:", "log:", "admin:", "tls:", "listeners:", "directory:", "backends:",
                        "routing:", "limits:", "hooks:"):
            self.assertRegex(dump, rf"(?m)^{section}", section)
        for default in ("  io: auto", "  spool_memory: 1M", "# hostname: not set", "    max_line: 65536",
                        "    max_line: 512", "    preauth_timeout: 5m", "default-auth-fail-ip",
                        "  line_timeout: 20s", "  user_sessions: 10", "    on_oversize: accept_unscanned",
                        "  min_version: TLSv1.2", "    negative_ttl: 10s"):
            self.assertIn(default, dump, default)
        path = self.write("dumped.yaml", dump)
        r = run("--check-config", path)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stdout + r.stderr)
        # A fixed point: the dump of the dump is the same (but for the file name and the
        # note that the rules were the built-in ones).
        def body(text):
            return [l for l in text.splitlines()[1:] if "built-in rules" not in l]
        again = run("--dump-config", path).stdout
        self.assertEqual(body(again), body(dump))

    def test_dump_config_round_trips_policy_and_hooks(self):
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        nets = self.dir / "nets.txt"
        nets.write_text("198.51.100.0/24\n")
        rich = self.text.replace("server: {", "server: { hostname: mx.example.org, io: epoll, user: nobody,") + f"""
admin: {{ listen: "127.0.0.1:19999" }}
lists:
  partners: {{ cidrs: [192.0.2.0/24, "2001:db8::/32"], file: "{nets}" }}
  office: {{ cidrs: [203.0.113.7] }}
limits:
  defaults: {{ ipv4_prefix: 24, exempt: [office] }}
  rules:
    - {{ name: conn, count: connections, key: [client.ip, listener], concurrency: 5, rate: 20/1m, burst: 40 }}
    - {{ name: fails, count: auth_failures, rate: 5/10m, distinct_credentials: true,
        on_exceed: {{ action: delay, delay: 1s..3s }} }}
    - {{ name: rcpts, count: recipients, key: [sender.domain], rate: 100/1h,
        when: {{ listener: mx, not: {{ client.net: {{ in: partners }} }} }},
        on_exceed: {{ action: tempfail, reply: "451 4.7.1 slow down" }} }}
  bans: {{ ttl: 30m, increment: {{ factor: 2.5, max: 2d }}, never: [partners] }}
  early_talker: {{ listeners: [mx], greet_wait: 3s, action: tempfail }}
  line_timeout: 0s
  user_sessions: 0
policies:
  - {{ name: helo-ip, stage: helo, when: {{ helo: {{ re2: '^\\[?[0-9.]+\\]?$' }} }}, then: reject,
      reply: "554 5.7.1 \\"bad\\" helo" }}
  - {{ name: exe, stage: data, when: {{ attachment.filename: {{ re2: ['(?i)\\.exe$', '(?i)\\.js$'] }} }},
      then: quarantine, mode: shadow }}
  - {{ name: slow, stage: rcpt, when: {{ rcpt: {{ re2: 'x@' }}, tls: false }}, then: delay, delay: 2s }}
  - {{ name: tagit, stage: data, when: {{ header: {{ re2: '^Subject: hi' }} }}, then: tag }}
hooks:
  defaults: {{ on_error: accept, timeouts: {{ connect: 2s, scan: 30s }}, max_size: 10M }}
  scanners:
    clam: {{ type: clamd, endpoints: ["unix:/run/clamav/clamd.ctl", "tcp:127.0.0.1:3310"], stream_max: 20M }}
    icap: {{ type: icap, url: "icap://127.0.0.1:1344/avscan", on_modified: reject, on_error: reject,
            timeouts: {{ scan: 5s }} }}
    rspamd: {{ type: milter, endpoint: "tcp:127.0.0.1:11332", breaker: {{ failures: 3, open: 1m }} }}
    dlp: {{ type: dlp, on_match: tag, detectors: [ {{ id: card, pattern: card_number, validate: luhn,
           min_count: 2, context: [visa, card] }} ] }}
  flows:
    - {{ when: {{ listener: mx }}, run: [clam, rspamd] }}
    - {{ when: {{ authenticated: true }}, run: [dlp] }}
    - {{ run: [icap] }}
  quarantine: {{ store: dir, dir: "{qdir}", retention: 7d }}
"""
        path, r = self.check(rich, "rich.yaml")
        self.assertEqual(r.stdout, "ok\n", r.stdout + r.stderr)
        r = run("--dump-config", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        dump = r.stdout
        for text in ('hostname: "mx.example.org"', 'io: epoll', 'rate: "20/1m"', 'delay: "1s..3s"',
                     'factor: 2.5', 'reply: "554 5.7.1 \\"bad\\" helo"', 'mode: shadow',
                     'header: "X-Mailgate-Policy: tagit"', "not: { client.net: { in: [\"partners\"] } }",
                     "stream_max: 20M", 'retention: 7d'):
            self.assertIn(text, dump, text)
        dumped = self.write("rich-dumped.yaml", dump)
        r = run("--check-config", dumped)
        self.assertEqual(r.stdout, "ok\n", r.stdout + r.stderr + dump)
        self.assertEqual(run("--dump-config", dumped).stdout.splitlines()[1:], dump.splitlines()[1:])

    def test_dump_config_of_the_packaged_config(self):
        # The shipped example (relative paths resolved; may name files absent here).
        src = ROOT / "packaging" / "mailgate.yaml"
        r = run("--dump-config", str(src))
        if r.returncode != 0:
            self.skipTest("the packaged config names files absent here: " + r.stderr[:200])
        self.assertIn("listeners:", r.stdout)

    def test_dump_config_errors(self):
        r = run("--dump-config", str(self.dir / "missing.yaml"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertIn("cannot read", r.stderr)

    # --- --check-config ----------------------------------------------------------

    def check(self, text: str, name: str):
        path = self.write(name, text)
        r = run("--check-config", path)
        return path, r

    def test_check_config_ok_only(self):
        r = run("--check-config", self.config)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""))

    def test_certificate_problems_all_reported_with_positions(self):
        d = self.dir / "bad-certs"
        d.mkdir(exist_ok=True)
        garbage = d / "garbage.pem"
        garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        unreadable = d / "unreadable.key"
        shutil.copy(self.cert[1], unreadable)
        os.chmod(unreadable, 0)
        text = self.text.replace(
            f'  certificates:\n    - {{ cert: "{self.cert[0]}", key: "{self.cert[1]}" }}\n',
            f'  certificates:\n'
            f'    - {{ cert: "{self.cert[0]}", key: "{self.cert[1]}" }}\n'
            f'    - {{ cert: "{garbage}", key: "{self.cert[1]}" }}\n'
            f'    - {{ cert: "{self.cert[0]}", key: "{self.other[1]}" }}\n'
            f'    - {{ cert: "{self.other[0]}", key: "{unreadable}" }}\n'
            f'    - {{ cert: "{self.other[0]}", key: "{d / "absent.key"}" }}\n')
        self.assertNotEqual(text, self.text, "the certificates section was not found")
        text = text.replace("threads: 2", "threads: lots")
        path, r = self.check(text, "badcerts.yaml")
        out = r.stdout
        self.assertEqual(r.returncode, 1, out + r.stderr)
        self.assertNotIn("ok", out.splitlines())
        self.assertNotIn("{", r.stderr)
        line, col = _pos(text, str(garbage))
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:{line}:{col - 1}: tls\.certificates\[1\]\.cert: .*not a PEM certificate")
        mismatch_line = _pos(text, self.other[1])[0]
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:{mismatch_line}:\d+: tls\.certificates\[2\]\.key: .*does not match the certificate")
        if os.geteuid() != 0:  # root reads anything
            self.assertRegex(out, rf"(?m)^{re.escape(path)}:{_pos(text, str(unreadable))[0]}:\d+: .*cannot read")
        # A key that cannot be opened at all (as root too).
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:{_pos(text, str(d / 'absent.key'))[0]}:\d+: "
                              rf"tls\.certificates\[4\]\.key: cannot read .*No such file")
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:{_pos(text, 'lots')[0]}:\d+: server\.threads")
        # In file order.
        lines = [int(m.group(1)) for m in re.finditer(rf"(?m)^{re.escape(path)}:(\d+):", out)]
        self.assertEqual(lines, sorted(lines))

    def test_invalid_key(self):
        bad = self.dir / "bad.key"
        bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        text = self.text.replace(f'key: "{self.cert[1]}"', f'key: "{bad}"')
        path, r = self.check(text, "badkey.yaml")
        self.assertEqual(r.returncode, 1)
        line, _ = _pos(text, str(bad))
        self.assertRegex(r.stdout, rf"(?m)^{re.escape(path)}:{line}:\d+: tls\.certificates\[0\]\.key: .*not a PEM private key")

    def test_no_log_lines_on_check(self):
        # A passwd-file problem used to be logged as JSON by the runtime's build.
        users = self.dir / "odd.passwd"
        users.write_text(Path(self.users).read_text() + "broken line without a password\n")
        text = self.text.replace(self.users, str(users))
        _, r = self.check(text, "oddusers.yaml")
        self.assertEqual(r.stdout, "ok\n", r.stderr)
        self.assertNotIn('{"', r.stderr)

    def test_unknown_backend_names_the_defined_ones(self):
        text = self.text.replace('primary: "storage-02"', 'primary: "storage-9"')
        path, r = self.check(text, "unknownbackend.yaml")
        self.assertEqual(r.returncode, 1)
        line, col = _pos(text, '"storage-9"')
        self.assertIn(f'{path}:{line}:{col}: routing.static[1].primary: unknown backend "storage-9" '
                      f'(defined: storage-01, storage-02, storage-03)', r.stdout)

    # --- the man page --------------------------------------------------------------

    def test_man_page_renders_and_lists_every_command(self):
        page = ROOT / "docs" / "mailgate.8"
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                           capture_output=True, text=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        if shutil.which("man"):
            r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                               env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"})
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, "")
            rendered = r.stdout
        else:
            rendered = subprocess.run(["groff", "-man", "-Tutf8", str(page)], capture_output=True,
                                      text=True).stdout
        rendered = re.sub(r".\x08", "", rendered).replace("\u2010", "-").replace("\u2212", "-")
        usage = run("--help").stdout
        commands = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-h)\b", usage))
        self.assertGreater(len(commands), 15)
        for c in sorted(commands):
            self.assertIn(c, rendered, f"mailgate(8) does not mention {c}")


if __name__ == "__main__":
    unittest.main()
