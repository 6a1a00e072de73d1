"""The status page on the admin listener (GET /status), in a real headless Chromium
(Debian's chromium and chromium-driver, driven through the W3C WebDriver API):

- the page renders, and its listener, backend, limited-address, ban and quarantine
  rows are found through the DOM; /status.json has the same data;
- a ban is lifted through the page (the token typed, the Lift button clicked): GET
  /bans no longer lists it; a wrong token typed in the page is refused (401) and the
  ban stays;
- a backend is drained and undrained through the page (file directory: an override
  of this gateway), and /status.json follows;
- requests without the token are refused: 401 with WWW-Authenticate: Bearer; GET
  never changes state;
- without admin.token_file (a reload) the listener is read-only: 403, and the page
  says so; a new token file is read again on reload."""

from __future__ import annotations

import json
import smtplib
import socket
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import harness
import webdriver
from fixtures import ALICE, USERS

POLICY = r"""
limits:
  rules:
    - { name: conn, count: connections, key: [client.net], concurrency: 1, on_exceed: tempfail }
policies:
  - { name: hold-suspect, stage: data, when: { sender: { re2: '(?i)@suspect\.example$' } }, then: quarantine }
"""

BAN_LIFTED = "192.0.2.55"
BAN_KEPT = "198.51.100.0/24"


class StatusPageTest(harness.LogsOnFailure, unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        # scripts/deps.sh installs Chromium and its driver: missing, they are a failure.
        why = webdriver.missing()
        if why:
            raise AssertionError(why)
        cls.dir = Path(harness.make_workdir("mailgate-status-"))
        cls.dovecot = cls.gateway = cls.browser = None
        try:
            cls._start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def _start(cls):
        cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="st").start()
        users_file = str(cls.dir / "users.passwd")
        harness.write_passwd(users_file, USERS)
        cls.port, cls.admin = harness.free_ports(2)
        cls.base_text = harness.mailgate_config(
            certificates=[], users_file=users_file,
            listeners=[{"name": "mx", "protocol": "smtp", "port": cls.port}],
            backends=[{"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}],
            routes=[{"domain": "*", "primary": "storage-01"}], threads=1)
        cls.hooks = f"hooks:\n  quarantine: {{ store: dir, dir: {cls.dir / 'quarantine'}, retention: 1h }}\n"
        text = cls.base_text + harness.admin_block(cls.admin, cls.dir) + POLICY + cls.hooks
        cls.gateway = harness.Mailgate(cls.dir, text).start()
        harness.wait_port(cls.admin, 10)
        cls.browser = webdriver.Browser(cls.dir)

    @classmethod
    def _stop(cls):
        if cls.browser is not None:
            cls.browser.quit()
        if cls.gateway is not None:
            cls.gateway.stop()
        if cls.dovecot is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        return f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-5000:]}"

    # -- helpers
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin}{path}"

    def http(self, method: str, path: str, headers: dict | None = None,
             body: bytes | None = None) -> tuple[int, str, dict]:
        req = urllib.request.Request(self.url(path), method=method, headers=headers or {}, data=body)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def ban(self, net: str) -> None:
        status, body, _ = self.http("POST", f"/bans?net={net}&ttl=1h&reason=status-test",
                                    harness.admin_headers(), b"")
        self.assertEqual(status, 200, body)

    def bans(self) -> list[str]:
        status, body, _ = self.http("GET", "/bans")
        self.assertEqual(status, 200, body)
        return [b["net"] for b in json.loads(body)]

    def status_json(self) -> dict:
        status, body, _ = self.http("GET", "/status.json")
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def smtp(self, timeout: float = 30) -> smtplib.SMTP:
        """A session, once the one before it has ended: the limit `conn` allows one
        session, and a session the test has just closed may not have ended on the
        gateway yet. The wait is bounded."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return smtplib.SMTP(harness.HOST, self.port, timeout=timeout)
            except smtplib.SMTPConnectError as e:
                if e.smtp_code != 421 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def quarantine_one(self) -> str:
        s = self.smtp()
        try:
            s.ehlo("client.example.com")
            s.mail("bad@suspect.example")
            s.rcpt(ALICE)
            code, text = s.data(b"From: bad@suspect.example\r\nSubject: held\r\n\r\nHello.\r\n")
            s.quit()
        finally:
            s.close()
        text = text.decode()
        self.assertEqual(code, 250, text)
        return text.split("queued as ")[1].split()[0]

    def limited_once(self) -> None:
        """A second connection while one is open exceeds the limit `conn`."""
        first = self.smtp(timeout=10)
        try:
            with socket.create_connection((harness.HOST, self.port), timeout=10) as second:
                line = second.recv(512)
                self.assertTrue(line.startswith(b"4"), line)
        finally:
            first.close()

    def open_page(self) -> None:
        self.browser.get(self.url("/status"))
        self.browser.wait_find("#listeners")

    def state_text(self, backend: str) -> str:
        """The backend's state cell, or "" while the page is being replaced (the
        action's 303 reloads it: an element found before may be gone)."""
        css = f'tr[data-backend="{backend}"] td.state'
        try:
            b = self.browser
            return b.text(b.find(css)) if b.find_all(css) else ""
        except webdriver.WebDriverError:
            return ""

    def row_text(self, css: str) -> str:
        return self.browser.text(self.browser.wait_find(css))

    # -- tests (run in name order)
    def test_1_page_renders_in_chromium(self):
        self.ban(BAN_LIFTED)
        self.ban(BAN_KEPT)
        qid = self.quarantine_one()
        self.limited_once()
        self.browser.get(self.url("/"))  # redirects to /status
        self.browser.wait_find("#listeners")
        self.assertTrue(self.browser.url.endswith("/status"), self.browser.url)
        self.assertIn("mailgate status", self.browser.title)
        b = self.browser
        self.assertRegex(b.text(b.find("#version")), r"^\d+\.\d+")
        self.assertEqual(b.text(b.find("#generation")), "1")
        listener = self.row_text('tr[data-listener="mx"]')
        self.assertIn("smtp", listener)
        self.assertIn(f"127.0.0.1:{self.port}", listener)
        accepted = int(b.text(b.find('tr[data-listener="mx"] td.accepted')))
        self.assertGreaterEqual(accepted, 2)
        backend = self.row_text('tr[data-backend="storage-01"]')
        self.assertIn("active", backend)
        self.assertEqual(b.text(b.find('tr[data-backend="storage-01"] td.health')), "up")
        self.assertIn("conn", self.row_text('tr[data-limited="127.0.0.1"]'))
        self.assertIn("status-test", self.row_text(f'tr[data-ban="{BAN_LIFTED}"]'))
        self.assertIn("status-test", self.row_text(f'tr[data-ban="{BAN_KEPT}"]'))
        q = self.row_text(f'tr[data-quarantine="{qid}"]')
        self.assertIn("bad@suspect.example", q)
        self.assertIn(ALICE, q)
        # No outside asset, no script: everything is inline.
        self.assertEqual(b.script("return document.scripts.length;"), 0)
        self.assertEqual(b.script(
            "return [...document.querySelectorAll('[src],link[href]')].length;"), 0)
        # The same data for scripts.
        s = self.status_json()
        self.assertEqual(s["config"]["generation"], 1)
        self.assertTrue(s["writable"])
        self.assertEqual([(l["name"], l["protocol"]) for l in s["listeners"]], [("mx", "smtp")])
        self.assertEqual(s["backends"][0]["name"], "storage-01")
        self.assertEqual(s["backends"][0]["state"], "active")
        self.assertIn(BAN_LIFTED, [x["net"] for x in s["bans"]])
        self.assertIn(qid, [e["id"] for e in s["quarantine"]["entries"]])
        self.assertEqual(s["limited"][0]["addr"], "127.0.0.1")

    def test_2_requests_without_the_token_are_refused(self):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
            status, body, hdrs = self.http("POST", f"/bans/lift?net={BAN_KEPT}", headers, b"")
            self.assertEqual(status, 401, (headers, body))
            self.assertTrue(hdrs.get("WWW-Authenticate", "").startswith("Bearer"), hdrs)
        status, _, _ = self.http("DELETE", f"/bans?net={BAN_KEPT}")
        self.assertEqual(status, 401)
        status, _, _ = self.http("POST", "/backends/drain?name=storage-01&state=drain",
                                 {"Content-Type": "application/x-www-form-urlencoded"}, b"token=nope")
        self.assertEqual(status, 401)
        # GET never changes state (no CSRF through a link).
        status, _, _ = self.http("GET", f"/bans/lift?net={BAN_KEPT}")
        self.assertEqual(status, 405)
        status, _, _ = self.http("GET", "/backends/drain?name=storage-01&state=drain")
        self.assertEqual(status, 405)
        self.assertIn(BAN_KEPT, self.bans())
        self.assertEqual(self.status_json()["backends"][0]["state"], "active")
        self.assertIn("admin request refused: bad credential", self.gateway.log_text())

    def test_3_wrong_token_in_the_page_is_refused(self):
        self.open_page()
        b = self.browser
        b.type(b.find("#token"), "not-the-token")
        b.click(b.find(f'tr[data-ban="{BAN_KEPT}"] button[name="lift"]'))
        msg = b.wait_find("#message")
        self.assertIn("wrong token", b.text(msg))
        self.assertIn(BAN_KEPT, self.bans())

    def test_4_ban_lifted_through_the_page(self):
        self.open_page()
        b = self.browser
        b.type(b.find("#token"), harness.ADMIN_TOKEN)
        b.click(b.find(f'tr[data-ban="{BAN_LIFTED}"] button[name="lift"]'))
        # The action answers 303 to /status: the page comes back without the ban.
        b.wait_find("#listeners")
        b.wait_gone(f'tr[data-ban="{BAN_LIFTED}"]')
        self.assertTrue(b.url.endswith("/status"), b.url)
        self.assertNotIn(BAN_LIFTED, self.bans())
        self.assertIn(BAN_KEPT, self.bans())
        self.assertIn("ban lifted through the admin endpoint", self.gateway.log_text())

    def test_5_drain_and_undrain_through_the_page(self):
        self.open_page()
        b = self.browser
        b.type(b.find("#token"), harness.ADMIN_TOKEN)
        b.click(b.find('tr[data-backend="storage-01"] button[name="drain"]'))
        harness.wait_for(lambda: "drain (this gateway)" in self.state_text("storage-01"),
                         10, what="storage-01 drained on the page")
        s = self.status_json()["backends"][0]
        self.assertEqual((s["state"], s["local_override"]), ("drain", True))
        self.assertIn('"via":"process"', self.gateway.log_text())
        b.type(b.find("#token"), harness.ADMIN_TOKEN)
        b.click(b.find('tr[data-backend="storage-01"] button[name="undrain"]'))
        harness.wait_for(lambda: b.find_all('tr[data-backend="storage-01"] button[name="drain"]'), 10,
                         what="storage-01 active again")
        self.assertEqual(self.status_json()["backends"][0]["state"], "active")

    def test_6_read_only_without_a_token_file_and_token_reread_on_reload(self):
        try:
            self.gateway.write_config(self.base_text + harness.admin_block(self.admin, self.dir, token=None)
                                      + POLICY + self.hooks)
            self.gateway.reload()
            harness.wait_for(lambda: self.status_json()["config"]["generation"] == 2, 10, what="reload")
            status, body, _ = self.http("POST", f"/bans/lift?net={BAN_KEPT}", harness.admin_headers(), b"")
            self.assertEqual(status, 403, body)
            self.assertIn("read-only", body)
            self.open_page()
            self.assertIn("Read-only", self.browser.text(self.browser.find("#read-only")))
            self.assertFalse(self.browser.find_all("#token"))
            # A new token in the file, read again on reload: the old one no longer works.
            self.gateway.write_config(self.base_text + harness.admin_block(self.admin, self.dir, token="rotated-token")
                                      + POLICY + self.hooks)
            self.gateway.reload()
            harness.wait_for(lambda: self.status_json()["config"]["generation"] == 3, 10, what="reload")
            status, _, _ = self.http("POST", f"/bans/lift?net={BAN_KEPT}", harness.admin_headers(), b"")
            self.assertEqual(status, 401)
            status, body, _ = self.http("POST", f"/bans/lift?net={BAN_KEPT}",
                                        harness.admin_headers("rotated-token"), b"")
            self.assertEqual(status, 200, body)
            self.assertNotIn(BAN_KEPT, self.bans())
        finally:
            self.gateway.write_config(self.base_text + harness.admin_block(self.admin, self.dir) + POLICY + self.hooks)
            self.gateway.reload()


if __name__ == "__main__":
    unittest.main()
