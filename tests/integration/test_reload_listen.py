"""SIGHUP and addresses: a new admin.listen is applied (the old port closes, the new
one answers /metrics; one that cannot be opened keeps the old with a logged reason),
and changed listener addresses are named, each with its old and new addresses, as
needing a restart; both compared against what is in service."""

from __future__ import annotations

import os
import random
import socket
import unittest
import urllib.error
import urllib.request

import harness


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://{harness.HOST}:{port}/metrics", timeout=5) as r:
        return r.read().decode()


class ReloadListenTest(harness.LogsOnFailure, unittest.TestCase):
    def setUp(self):
        self.work = harness.make_workdir("mailgate-reload-listen-")
        self.addCleanup(harness.remove_workdir, self.work)
        ca = harness.make_ca(f"{self.work}/certs")
        self.cert = harness.make_cert(ca, f"{self.work}/certs", ["localhost"])
        self.users = harness.write_passwd(f"{self.work}/users.passwd", {"alice@example.org": "pw"})
        self.imap, self.pop3, self.imap2, self.smtp = harness.free_ports(4)
        self.gw = None

    def diagnostics(self) -> str:
        return self.gw.log_text()[-8000:] if self.gw else ""

    def config(self, admin_port: int | None, listeners: list[dict]) -> str:
        text = harness.mailgate_config(
            certificates=[self.cert], users_file=self.users, listeners=listeners,
            backends=[{"name": "b1", "imap": harness.free_port(), "pop3": harness.free_port(),
                       "health_interval": "1h"}],
            routes=[{"domain": "*", "primary": "b1"}])
        if getattr(self, "start_as_nobody", False):
            # Everything a reload reads must be readable by the user after the drop.
            text = text.replace("shutdown_grace: 2s }", "shutdown_grace: 2s, user: nobody }")
            for root, dirs, files in os.walk(self.work):
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o755)
                for f in files:
                    os.chmod(os.path.join(root, f), 0o644)
            os.chmod(self.work, 0o755)
        return (harness.admin_block(admin_port, self.work) if admin_port else "") + text

    def start(self, admin_port: int | None, listeners: list[dict]) -> harness.Mailgate:
        self.gw = harness.Mailgate(self.work, self.config(admin_port, listeners))
        self.gw.start()
        self.addCleanup(self.gw.stop)
        return self.gw

    def reload(self, admin_port: int | None, listeners: list[dict]) -> list[dict]:
        """Writes the config, sends SIGHUP, returns the log lines the reload wrote."""
        before = len(self.gw.log_lines())
        self.gw.write_config(self.config(admin_port, listeners))
        gen = sum(1 for l in self.gw.log_lines() if l.get("msg") == "configuration reloaded")
        self.gw.reload()
        harness.wait_for(lambda: sum(1 for l in self.gw.log_lines()
                                     if l.get("msg") == "configuration reloaded") > gen,
                         what="configuration reloaded")
        return self.gw.log_lines()[before:]

    def imap_listener(self, port: int, name: str = "imap") -> dict:
        return {"name": name, "protocol": "imap", "port": port, "tls": "starttls"}

    def test_admin_listen_moves_on_reload(self):
        a1, a2 = harness.free_ports(2)
        listeners = [self.imap_listener(self.imap)]
        self.start(a1, listeners)
        self.assertIn("mailgate_", metrics(a1))

        lines = self.reload(a2, listeners)
        harness.wait_port(a2)
        self.assertIn("mailgate_", metrics(a2))
        harness.wait_port_closed(a1)
        moved = [l for l in lines if l.get("msg") == "admin listener moved"]
        self.assertEqual(len(moved), 1, lines)
        self.assertEqual(moved[0]["old"], f"{harness.HOST}:{a1}")
        self.assertEqual(moved[0]["new"], f"{harness.HOST}:{a2}")

        # The same file again: compared with the listener in service, nothing moves.
        lines = self.reload(a2, listeners)
        self.assertFalse([l for l in lines if "admin" in l.get("msg", "")], lines)
        self.assertIn("mailgate_", metrics(a2))

        # An address that cannot be opened: the old listener stays, the log says why.
        with socket.socket() as busy:
            busy.bind((harness.HOST, 0))
            busy.listen(1)
            a3 = busy.getsockname()[1]
            lines = self.reload(a3, listeners)
            kept = [l for l in lines if l.get("msg", "").startswith("admin.listen not changed")]
            self.assertEqual(len(kept), 1, lines)
            self.assertEqual(kept[0]["new"], f"{harness.HOST}:{a3}")
            self.assertIn("in use", kept[0]["error"].lower())
            self.assertIn("mailgate_", metrics(a2))

        # Removed: the admin listener closes.
        lines = self.reload(None, listeners)
        harness.wait_port_closed(a2)
        self.assertTrue([l for l in lines if l.get("msg", "").startswith("admin listener closed")], lines)

    def test_listener_changes_are_named_as_needing_a_restart(self):
        self.start(None, [self.imap_listener(self.imap),
                          {"name": "pop3", "protocol": "pop3", "port": self.pop3, "tls": "starttls"}])
        new = [self.imap_listener(self.imap2),
               {"name": "mx", "protocol": "smtp", "port": self.smtp, "tls": "starttls"}]
        for attempt in range(2):  # against the sockets in service: said again until a restart
            lines = self.reload(None, new)
            changes = {l["listener"]: l for l in lines
                       if l.get("msg") == "listener change not applied: a restart is needed"}
            self.assertEqual(set(changes), {"imap", "pop3", "mx"}, lines)
            self.assertEqual(changes["imap"]["change"], "addresses")
            self.assertEqual(changes["imap"]["old"], f"{harness.HOST}:{self.imap}")
            self.assertEqual(changes["imap"]["new"], f"{harness.HOST}:{self.imap2}")
            self.assertEqual(changes["pop3"]["change"], "removed")
            self.assertEqual(changes["pop3"]["old"], f"{harness.HOST}:{self.pop3}")
            self.assertEqual(changes["mx"]["change"], "added")
            self.assertEqual(changes["mx"]["new"], f"{harness.HOST}:{self.smtp}")
            summary = [l for l in lines if l.get("msg") == "listeners keep their addresses until a restart"]
            self.assertEqual(len(summary), 1, lines)
            self.assertIn(f"listener imap: {harness.HOST}:{self.imap} -> {harness.HOST}:{self.imap2}",
                          summary[0]["restart_needed"])
        # Still served where they were bound.
        self.assertTrue(harness.port_open(self.imap))
        self.assertFalse(harness.port_open(self.imap2))

        # Back to the addresses in service: nothing to say.
        lines = self.reload(None, [self.imap_listener(self.imap),
                                   {"name": "pop3", "protocol": "pop3", "port": self.pop3, "tls": "starttls"}])
        self.assertFalse([l for l in lines if "restart" in l.get("msg", "")], lines)

    @unittest.skipUnless(os.geteuid() == 0, "the privilege drop needs root")
    def test_privileged_ports_after_the_privilege_drop(self):
        a1 = harness.free_port()
        low = _free_low_port()
        self.start_as_nobody = True
        self.start(a1, [self.imap_listener(self.imap)])
        lines = self.reload(low, [self.imap_listener(self.imap), self.imap_listener(low, "imap-low")])
        kept = [l for l in lines if l.get("msg", "").startswith("admin.listen not changed")]
        self.assertEqual(len(kept), 1, lines)
        self.assertIn("server.user", kept[0]["note"])
        self.assertIn(f"port {low} ", kept[0]["note"])
        self.assertIn("mailgate_", metrics(a1))
        added = [l for l in lines if l.get("msg") == "listener change not applied: a restart is needed"]
        self.assertEqual([l["listener"] for l in added], ["imap-low"], lines)
        self.assertIn(f"port {low} ", added[0]["note"])


def _free_low_port() -> int:
    """A free TCP port in 600..999 on loopback (a privileged one)."""
    ports = list(range(600, 1000))
    random.shuffle(ports)
    for p in ports:
        with socket.socket() as s:
            try:
                s.bind((harness.HOST, p))
                return p
            except OSError:
                continue
    raise OSError("no free port in 600..999")


if __name__ == "__main__":
    unittest.main()
