"""systemd integration: the notify protocol (READY, RELOADING, STOPPING, WATCHDOG),
the privilege drop after binding a port below 1024, log.file reopened on SIGUSR1,
and the unit file in packaging/ checked by systemd-analyze.

The test plays the service manager: it binds a unix datagram socket, names it in
NOTIFY_SOCKET (a path, or an abstract name written @...) and reads what the gateway
sends."""
from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import unittest
from pathlib import Path

import harness

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "mailgate.service"


class NotifySocket:
    """A unix datagram socket the gateway's sd_notify messages arrive on."""

    def __init__(self, workdir: Path, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"mailgate-test-{os.getpid()}-{random.randrange(1 << 30)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = str(workdir / "notify.sock")
            self.sock.bind(path)
            self.address = path
        self.messages: list[dict[str, str]] = []

    def _parse(self, data: bytes) -> dict[str, str]:
        out = {}
        for line in data.decode().split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
        return out

    def expect(self, key: str, value: str | None = None, timeout: float = 15.0) -> dict[str, str]:
        """The next message (after those already read) that sets key (to value)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key}={value or '*'} within {timeout}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            msg = self._parse(data)
            self.messages.append(msg)
            if key in msg and (value is None or msg[key] == value):
                return msg

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self._parse(self.sock.recv(4096)))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def _config(d: Path, port: int, server_extra: str = "", log_extra: str = "") -> str:
    ca = harness.make_ca(d / "certs")
    cert = harness.make_cert(ca, d / "certs", ["mail.example.org"])
    users = harness.write_passwd(d / "users.passwd", {"alice@example.org": "pw"}, "PLAIN")
    text = harness.mailgate_config(
        certificates=[cert], users_file=users,
        listeners=[{"name": "imaps", "protocol": "imap", "port": port, "tls": "implicit"}],
        backends=[{"name": "storage-01", "imap": 1143, "pop3": 1110, "lmtp": 1024}],
        routes=[{"domain": "example.org", "primary": "storage-01"}])
    text = text.replace("shutdown_grace: 2s }", f"shutdown_grace: 2s{server_extra} }}")
    return text.replace("format: json }", f"format: json{log_extra} }}")


def _free_low_port() -> int:
    """A free TCP port in 600..999 on loopback (a privileged one)."""
    ports = list(range(600, 1000))
    random.shuffle(ports)
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((harness.HOST, p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise OSError("no free port in 600..999")


def _status_ids(pid: int) -> tuple[list[int], list[int]]:
    text = Path(f"/proc/{pid}/status").read_text()
    uid = [int(x) for x in re.search(r"^Uid:\s+(.*)$", text, re.M).group(1).split()]
    gid = [int(x) for x in re.search(r"^Gid:\s+(.*)$", text, re.M).group(1).split()]
    return uid, gid


class NotifyTest(unittest.TestCase):

    def setUp(self):
        self.dir = Path(harness.make_workdir("mailgate-systemd-"))
        self.port = harness.free_port()
        self.gw = None
        self.notify = None

    def tearDown(self):
        if self.gw:
            self.gw.stop()
            if any(self._outcome.result.errors) or any(self._outcome.result.failures):
                print(self.gw.log_text()[-4000:])
        if self.notify:
            self.notify.close()
        harness.remove_workdir(self.dir)

    def start(self, config: str, abstract: bool = False, extra_env: dict | None = None) -> None:
        self.notify = NotifySocket(self.dir, abstract)
        env = {"NOTIFY_SOCKET": self.notify.address}
        env.update(extra_env or {})
        self.gw = harness.Mailgate(self.dir / "gw", config, env=env)
        # Not harness.start(): that waits for the port; here READY=1 is the signal.
        self.gw._log = open(self.gw.log_path, "ab")
        self.gw.proc = subprocess.Popen(harness.gateway_command(self.gw.binary, "--config", str(self.gw.config_path)),
                                        stdin=subprocess.DEVNULL, stdout=self.gw._log,
                                        stderr=self.gw._log, cwd=self.gw.workdir,
                                        env={**os.environ, **env})

    def test_ready_reload_stopping(self):
        self.start(_config(self.dir, self.port))
        ready = self.notify.expect("READY", "1")
        # READY=1 comes once the listeners accept: a connection right now succeeds.
        with socket.create_connection((harness.HOST, self.port), timeout=2):
            pass
        self.assertIn("STATUS", ready)
        self.assertIn("generation 1", ready["STATUS"])
        self.assertTrue(any('"msg":"mailgate started"' in l for l in self.gw.log_text().splitlines()))

        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 with the new generation.
        self.gw.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.expect("RELOADING", "1")
        self.assertRegex(reloading.get("MONOTONIC_USEC", ""), r"^\d+$")
        again = self.notify.expect("READY", "1")
        self.assertIn("generation 2", again.get("STATUS", ""))

        # A failed reload: RELOADING=1, then READY=1 saying it failed (still serving).
        self.gw.config_path.write_text(self.gw.config_path.read_text() + "bogus_key: 1\n")
        self.gw.proc.send_signal(signal.SIGHUP)
        self.notify.expect("RELOADING", "1")
        failed = self.notify.expect("READY", "1")
        self.assertIn("reload failed", failed.get("STATUS", ""))
        self.assertIn("generation 2", failed.get("STATUS", ""))

        # SIGTERM: STOPPING=1, and the process exits.
        self.gw.proc.send_signal(signal.SIGTERM)
        self.notify.expect("STOPPING", "1")
        self.assertEqual(self.gw.proc.wait(15), 0)

    def test_watchdog_pings(self):
        # An abstract socket name this time; WATCHDOG_PID names the gateway itself
        # (unknown before the start: absent means "for the main process").
        self.start(_config(self.dir, self.port), abstract=True, extra_env={"WATCHDOG_USEC": "400000"})
        self.notify.expect("READY", "1")
        t0 = time.monotonic()
        for _ in range(3):
            self.notify.expect("WATCHDOG", "1", timeout=5)
        # Every 200 ms (half of 400 ms): three pings well within 4 s even on a busy machine.
        self.assertLess(time.monotonic() - t0, 4.0)
        self.assertTrue(any('"msg":"watchdog enabled"' in l for l in self.gw.log_text().splitlines()))

    def test_watchdog_for_another_pid_is_ignored(self):
        self.start(_config(self.dir, self.port),
                   extra_env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        self.notify.expect("READY", "1")
        time.sleep(0.8)
        self.notify.drain()
        self.assertFalse(any("WATCHDOG" in m for m in self.notify.messages), self.notify.messages)

    def test_without_notify_socket_nothing_changes(self):
        gw = harness.Mailgate(self.dir / "plain", _config(self.dir, self.port))
        self.gw = gw
        gw.start()
        self.assertFalse(any("cannot notify" in l for l in gw.log_text().splitlines()))


@unittest.skipUnless(os.geteuid() == 0, "the privilege drop needs root")
class PrivilegeDropTest(unittest.TestCase):

    def setUp(self):
        self.dir = Path(harness.make_workdir("mailgate-privdrop-"))
        self.gw = None

    def tearDown(self):
        if self.gw:
            self.gw.stop()
        harness.remove_workdir(self.dir)

    def test_binds_low_port_then_runs_as_nobody(self):
        nobody = pwd.getpwnam("nobody")
        port = _free_low_port()
        text = _config(self.dir, port, server_extra=", user: nobody")
        self.gw = harness.Mailgate(self.dir / "gw", text)
        self.gw.start()
        harness.wait_port(port, 5)
        # The port is bound before the switch: give the switch its moment (bounded).
        harness.wait_for(lambda: _status_ids(self.gw.pid)[0] != [0] * 4, 5, what="the privilege drop")
        uid, gid = _status_ids(self.gw.pid)
        self.assertEqual(uid, [nobody.pw_uid] * 4, f"Uid: {uid}")
        self.assertEqual(gid, [nobody.pw_gid] * 4, f"Gid: {gid}")
        groups = Path(f"/proc/{self.gw.pid}/status").read_text()
        self.assertNotRegex(groups, r"(?m)^Groups:.*\b0\b")
        # Every thread switched, not only the main one.
        for task in Path(f"/proc/{self.gw.pid}/task").iterdir():
            status = (task / "status").read_text()
            self.assertRegex(status, rf"(?m)^Uid:\s+{nobody.pw_uid}\s+{nobody.pw_uid}\s")
        log = self.gw.log_text()
        self.assertIn('"msg":"privileges dropped"', log)
        self.assertIn('"user":"nobody"', log)
        # The key is root's (0600): a reload could not read it, and the start says so.
        self.assertIn("not accessible to its user", log)
        self.assertRegex(log, r'"problem":"tls key [^"]*: cannot read: Permission denied"')
        # Still serving: a TLS handshake on the privileged port.
        ctx = harness.client_context(verify=False)
        with socket.create_connection((harness.HOST, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="mail.example.org") as tls:
                self.assertTrue(tls.recv(100).startswith(b"* OK"))
        self.assertEqual(self.gw.stop(), 0)

    def test_unknown_user_refuses_to_start(self):
        port = harness.free_port()
        text = _config(self.dir, port, server_extra=", user: no-such-user-mailgate")
        gw = harness.Mailgate(self.dir / "gw", text)
        try:
            gw.start(timeout=10)
        except RuntimeError as e:  # exited before its port was seen open
            self.assertIn("cannot drop privileges", str(e))
        else:
            # The port is bound before the switch is tried: it may be seen open in the
            # instant before the refusal. The process must exit all the same.
            harness.wait_for(lambda: gw.proc.poll() is not None, 10, what="mailgate to exit")
            self.assertEqual(gw.proc.returncode, 1)
            self.assertIn("cannot drop privileges", gw.log_text())
        finally:
            gw.stop()


class LogFileTest(unittest.TestCase):

    def setUp(self):
        self.dir = Path(harness.make_workdir("mailgate-logfile-"))
        self.gw = None

    def tearDown(self):
        if self.gw:
            self.gw.stop()
        harness.remove_workdir(self.dir)

    @staticmethod
    def wait_text(path: Path, needle: str, timeout: float = 10.0) -> str:
        def have():
            try:
                t = path.read_text()
            except OSError:
                return None
            return t if needle in t else None
        return harness.wait_for(have, timeout, what=f"{needle!r} in {path}")

    def test_sigusr1_reopens_after_rename(self):
        port = harness.free_port()
        logfile = self.dir / "logs" / "mailgate.log"
        logfile.parent.mkdir()
        text = _config(self.dir, port, log_extra=f", file: {logfile}")
        self.gw = harness.Mailgate(self.dir / "gw", text)
        self.gw.start()
        self.wait_text(logfile, '"msg":"mailgate started"')
        stderr_before = self.gw.log_path.read_text()
        self.assertNotIn('"msg":"mailgate started"', stderr_before)  # not on stderr

        # logrotate without copytruncate: rename, then SIGUSR1 (its postrotate).
        rotated = logfile.with_suffix(".log.1")
        logfile.rename(rotated)
        self.gw.proc.send_signal(signal.SIGUSR1)
        fresh = self.wait_text(logfile, '"msg":"log file reopened"')
        self.assertTrue(fresh.startswith("{"))
        # The next lines go to the new file, none to the old one.
        old_size = rotated.stat().st_size
        self.gw.reload()
        self.wait_text(logfile, '"msg":"configuration reloaded"')
        self.assertEqual(rotated.stat().st_size, old_size)
        self.assertNotIn("configuration reloaded", rotated.read_text())

        # SIGHUP reopens too: rename again, reload, the reload's lines are in a new file.
        logfile.rename(self.dir / "logs" / "mailgate.log.2")
        self.gw.reload()
        self.wait_text(logfile, '"msg":"configuration reloaded"')

        # The shutdown lines reach the file as well.
        self.assertEqual(self.gw.stop(), 0)
        self.assertIn('"msg":"mailgate stopped"', logfile.read_text())

    def test_unwritable_log_file_refuses_to_start(self):
        port = harness.free_port()
        text = _config(self.dir, port, log_extra=f", file: {self.dir}/no/such/dir/mailgate.log")
        gw = harness.Mailgate(self.dir / "gw", text)
        with self.assertRaises(RuntimeError) as cm:
            gw.start(timeout=10)
        gw.stop()
        self.assertIn("cannot open the log file", str(cm.exception))


class UnitFileTest(unittest.TestCase):

    def setUp(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze is not installed (scripts/deps.sh installs systemd)")
        self.dir = Path(harness.make_workdir("mailgate-unit-"))
        # verify wants the executables to exist: point them at the build.
        text = UNIT.read_text().replace("/usr/sbin/mailgate", harness.mailgate_bin())
        self.unit = self.dir / "mailgate.service"
        self.unit.write_text(text)

    def tearDown(self):
        harness.remove_workdir(self.dir)

    def test_verify_is_clean(self):
        r = subprocess.run(["systemd-analyze", "verify", str(self.unit)],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # A misspelt setting is only a warning for verify: none may be printed.
        problems = [l for l in (r.stdout + r.stderr).splitlines() if "mailgate.service" in l]
        self.assertEqual(problems, [])

    def test_required_settings(self):
        text = UNIT.read_text()
        for line in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID",
                     "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes",
                     "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID",
                     "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "MemoryDenyWriteExecute=yes"):
            self.assertRegex(text, rf"(?m)^{re.escape(line)}$")
        self.assertRegex(text, r"(?m)^WatchdogSec=\d+s$")
        self.assertRegex(text, r"(?m)^ExecStartPre=/usr/sbin/mailgate --check-config ")

    def test_syscall_filter_keeps_io_uring(self):
        m = re.search(r"(?m)^SystemCallFilter=(.*)$", UNIT.read_text())
        self.assertIsNotNone(m)
        allowed = set()
        for item in m.group(1).split():
            if item.startswith("@"):
                groups = [item]
                # Expand nested groups (@system-service names @aio, @io-event, ...).
                while groups:
                    g = groups.pop()
                    out = subprocess.run(["systemd-analyze", "syscall-filter", g],
                                         capture_output=True, text=True, timeout=60).stdout
                    for line in out.splitlines()[1:]:
                        w = line.strip()
                        if not w or w.startswith("#"):
                            continue
                        if w.startswith("@"):
                            groups.append(w)
                        else:
                            allowed.add(w)
            else:
                allowed.add(item)
        for call in ("io_uring_setup", "io_uring_enter", "io_uring_register", "setresuid", "setresgid",
                     "setgroups", "epoll_wait", "sendmsg", "accept4"):
            self.assertIn(call, allowed)

    def test_security_exposure(self):
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(self.unit)],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for mailgate.service: (\d+\.\d+)", r.stdout + r.stderr)
        if not m:
            self.skipTest("this systemd-analyze cannot rate a unit file offline")
        self.assertLessEqual(float(m.group(1)), 3.0, r.stdout)


if __name__ == "__main__":
    unittest.main()
