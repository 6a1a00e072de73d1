"""The command line: --version, --check-config, start-up errors, SIGHUP, SIGTERM."""

import imaplib
import os
import re
import shutil
import signal
import time
import unittest
from pathlib import Path

import harness
from fixtures import ALICE, ALICE_PW, USERS, GatewayTestCase


def _valid_config(d: Path) -> str:
    ca = harness.make_ca(d / "certs")
    cert = harness.make_cert(ca, d / "certs", ["mail.example.org"])
    users = harness.write_passwd(d / "users.passwd", {"alice@example.org": "pw"}, "PLAIN")
    imap, pop3 = harness.free_ports(2)
    return harness.mailgate_config(
        certificates=[cert], users_file=users,
        listeners=[{"name": "imaps", "protocol": "imap", "port": imap, "tls": "implicit"},
                   {"name": "pop3s", "protocol": "pop3", "port": pop3, "tls": "implicit"}],
        backends=[{"name": "storage-01", "imap": 1143, "pop3": 1110, "lmtp": 1024},
                  {"name": "storage-02", "imap": 2143, "pop3": 2110, "lmtp": 2024}],
        routes=[{"domain": "example.org", "primary": "storage-01", "secondary": "storage-02"}])


def _pos(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of needle's first occurrence."""
    i = text.index(needle)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return line, col


class CliTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(harness.make_workdir("mailgate-cli-"))
        cls.valid = _valid_config(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def write(self, name: str, text: str) -> str:
        p = self.dir / name
        p.write_text(text)
        return str(p)

    def check(self, path: str):
        r = harness.run_mailgate("--check-config", path)
        self.last = r
        return r.returncode, r.stdout + r.stderr

    def test_version(self):
        r = harness.run_mailgate("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"mailgate.*\d+\.\d+\.\d+")

    def test_check_config_ok(self):
        rc, out = self.check(self.write("ok.yaml", self.valid))
        self.assertEqual(self.last.stdout.strip(), "ok", out)
        self.assertEqual(rc, 0)

    def test_unknown_key(self):
        text = self.valid.replace("format: json }", "format: json, colour: true }")
        path = self.write("unknown.yaml", text)
        rc, out = self.check(path)
        self.assertEqual(rc, 1, out)
        line, col = _pos(text, "colour")
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:{line}:\d+: .*colour")
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:{line}:{col}: ",
                         f"expected column {col} (the key)")

    def test_every_problem_reported(self):
        text = self.valid
        text = text.replace("threads: 2", "threads: lots")
        text = text.replace('name: "pop3s"', 'name: "imaps"')            # duplicate listener
        text = text.replace('primary: "storage-01"', 'primary: "storage-99"')  # unknown backend
        text = text.replace("health: { interval: 1s", "health: { interval: 5 parsecs", 1)
        path = self.write("many.yaml", text)
        rc, out = self.check(path)
        self.assertEqual(rc, 1, out)
        errors = [l for l in out.splitlines() if l.startswith(path + ":")]
        self.assertTrue(all(re.match(rf"{re.escape(path)}:\d+:\d+: \S", l) for l in errors), out)
        lines_reported = {int(l.split(":")[1]) for l in errors}
        dup = text.index('name: "imaps"', text.index('name: "imaps"') + 1)
        expected = {
            "threads: lots": _pos(text, "lots")[0],
            "duplicate listener name": text.count("\n", 0, dup) + 1,
            "unknown backend in route": _pos(text, "storage-99")[0],
            "bad duration": _pos(text, "parsecs")[0],
        }
        for what, line in expected.items():
            self.assertIn(line, lines_reported, f"no error on line {line} ({what}):\n{out}")

    def test_missing_users_file_and_cert(self):
        text = self.valid.replace("users.passwd", "no-such-users.passwd")
        text = text.replace("mail.example.org.pem", "no-such-cert.pem")
        path = self.write("missing.yaml", text)
        rc, out = self.check(path)
        self.assertEqual(rc, 1, out)
        self.assertIn("no-such-users.passwd", out)
        self.assertIn("no-such-cert.pem", out)
        self.assertRegex(out, rf"(?m)^{re.escape(path)}:\d+:\d+: ")

    def test_missing_config_file(self):
        path = str(self.dir / "does-not-exist.yaml")
        rc, out = self.check(path)
        self.assertEqual(rc, 1)
        self.assertIn(path, out)

    def test_yaml_syntax_error(self):
        path = self.write("syntax.yaml", self.valid + "listeners: [ {\n")
        rc, out = self.check(path)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, rf"{re.escape(path)}:\d+:\d+: ")

    def test_run_with_bad_config_fails_fast(self):
        text = self.valid.replace("format: json }", "format: json, colour: true }")
        path = self.write("badrun.yaml", text)
        r = harness.run_mailgate("--config", path, timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{path}:", r.stdout + r.stderr)

    def test_sigterm_exits_cleanly(self):
        gw = harness.Mailgate(self.dir / "term", self.valid).start()
        t0 = time.monotonic()
        rc = gw.stop()
        self.assertEqual(rc, 0, gw.log_text()[-2000:])
        self.assertLess(time.monotonic() - t0, 5)


class ReloadTest(GatewayTestCase):
    """SIGHUP reloads the directory (passwd-file) and keeps running sessions."""

    def test_sighup_reloads_users_and_keeps_sessions(self):
        env = self.env
        imap = imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=env.context,
                                 timeout=10)
        imap.login(ALICE, ALICE_PW)
        imap.select("INBOX")

        dave, dave_pw = "dave@example.org", "dave-password"
        probe = imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=env.context,
                                  timeout=10)
        with self.assertRaises(imaplib.IMAP4.error):
            probe.login(dave, dave_pw)
        probe.shutdown()
        users = dict(USERS, **{dave: dave_pw})
        env.dovecots[0].write_users(users)
        harness.write_passwd(env.users_file, users)
        env.gateway.reload()

        def dave_in():
            try:
                i = imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=env.context,
                                      timeout=10)
                try:
                    i.login(dave, dave_pw)
                except imaplib.IMAP4.error:
                    i.shutdown()
                    return False
                i.logout()
                return True
            except OSError:
                return False
        harness.wait_for(dave_in, 10, 0.5, "new user accepted after SIGHUP")
        self.assertEqual(imap.noop()[0], "OK", "session dropped by reload")
        imap.logout()
        self.assertTrue(env.gateway.is_running())

    def test_sighup_with_broken_config_keeps_running(self):
        env = self.env
        good = env.gateway.config_text
        env.gateway.write_config(good.replace("format: json }", "format: json, colour: true }"))
        try:
            env.gateway.reload()
            time.sleep(1)
            self.assertTrue(env.gateway.is_running(), "a bad config on reload stopped mailgate")
            i = imaplib.IMAP4_SSL(harness.HOST, self.port("imaps"), ssl_context=env.context,
                                  timeout=10)
            self.assertEqual(i.login(ALICE, ALICE_PW)[0], "OK")
            i.logout()
            self.assertIn(f"{env.gateway.config_path}:", env.gateway.log_text())
        finally:
            env.gateway.write_config(good)


if __name__ == "__main__":
    unittest.main()
