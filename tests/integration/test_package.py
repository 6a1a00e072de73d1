"""The Debian package: built by scripts/package.sh (or $MAILGATE_DEB), installed with
apt into a clean Debian 12 chroot, checked, started as the unit's ExecStart starts it,
stopped, and purged.

The chroot's base system is made once by debootstrap (minbase, from Debian's mirror)
and kept in /var/tmp/mailgate-pkgtest/base; each run works on a copy of it. No
systemd runs in a chroot: the gateway is started directly as root, as ExecStart
would, and drops to the `mailgate` user the package created. The chroot shares the
host's network, so the test rewrites the listener ports in a copy of the shipped
configuration to ports free on the host.

If the mirror cannot be reached the test fails and says so: it never passes silently.
$MAILGATE_DEBIAN_MIRROR names another mirror; $MAILGATE_PKGTEST_DIR another cache.
"""
from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import unittest
from pathlib import Path

import harness

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MAILGATE_PKGTEST_DIR", "/var/tmp/mailgate-pkgtest"))
BASE = CACHE / "base"
MIRROR = os.environ.get("MAILGATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUDGET = 480.0  # seconds for the whole file (package build excluded when $MAILGATE_DEB is set)

SOURCES = f"""deb {MIRROR} bookworm main
deb {MIRROR} bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
"""


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def _low_free_port() -> int:
    for p in range(700, 1000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((harness.HOST, p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise OSError("no free port in 700..999")


class Chroot:
    """A copy of the cached base with /proc and /dev bound in; always unmounted."""

    def __init__(self, root: Path):
        self.root = root
        self.mounts: list[Path] = []

    def mount(self) -> None:
        for what in ("proc", "dev", "dev/pts"):
            target = self.root / what
            target.mkdir(parents=True, exist_ok=True)
            r = _run(["mount", "--bind", f"/{what}", str(target)], 30)
            if r.returncode != 0:
                raise RuntimeError(f"mount --bind /{what}: {r.stderr}")
            self.mounts.append(target)

    def unmount(self) -> None:
        for target in reversed(self.mounts):
            if _run(["umount", str(target)], 30).returncode != 0:
                _run(["umount", "-l", str(target)], 30)
        self.mounts.clear()

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
               "LANG": "C.UTF-8", "HOME": "/root"}
        return _run(["chroot", str(self.root), *cmd], timeout, env=env)

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")


def _ensure_base(deadline: float) -> None:
    """debootstrap the base once (under a lock: parallel runs share it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (BASE / "usr/bin/apt-get").exists():
            return
        if not shutil.which("debootstrap"):
            raise AssertionError("debootstrap is not installed (scripts/deps.sh installs it)")
        tmp = CACHE / f"base.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            r = _run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), MIRROR],
                     max(60.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise AssertionError(f"debootstrap from {MIRROR} did not finish in time")
        if r.returncode != 0:
            log = ""
            try:
                log = (tmp / "debootstrap/debootstrap.log").read_text()[-2000:]
            except OSError:
                pass
            shutil.rmtree(tmp, ignore_errors=True)
            raise AssertionError(f"debootstrap could not make a Debian 12 base from {MIRROR} "
                                 f"(is the mirror reachable?):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}\n{log}")
        tmp.rename(BASE)


def _build_deb() -> Path:
    given = os.environ.get("MAILGATE_DEB")
    if given:
        return Path(given)
    if harness.sanitizer_build():
        # A sanitizer build needs the compiler's runtime, which a Debian base has not:
        # scripts/test.sh packages the release build (its first pass) and hands the
        # package on in MAILGATE_DEB.
        raise unittest.SkipTest("the gateway under test is a sanitizer build and MAILGATE_DEB is not set")
    # The same build as the binary under test, when it is a CMake build directory.
    build = Path(harness.mailgate_bin()).resolve().parent
    if not (build / "CMakeCache.txt").exists():
        build = REPO / "build"
    r = _run([str(REPO / "scripts" / "package.sh"), str(build)], 900)
    if r.returncode != 0:
        raise AssertionError(f"scripts/package.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@unittest.skipUnless(os.geteuid() == 0, "a chroot needs root")
class PackageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.t0 = time.monotonic()
        cls.deb = _build_deb()
        cls.deadline = time.monotonic() + BUDGET
        _ensure_base(cls.deadline)
        cls.root = CACHE / f"run-{os.getpid()}"
        shutil.rmtree(cls.root, ignore_errors=True)
        r = _run(["cp", "-a", str(BASE), str(cls.root)], 300)
        if r.returncode != 0:
            raise AssertionError(f"copying the base: {r.stderr}")
        cls.chroot = Chroot(cls.root)
        try:
            cls.chroot.mount()
            cls._install()
        except BaseException:
            cls._cleanup()
            raise

    @classmethod
    def _install(cls):
        c = cls.chroot
        shutil.copy("/etc/resolv.conf", c.path("/etc/resolv.conf"))
        c.path("/etc/apt/sources.list").write_text(SOURCES)
        shutil.copy(cls.deb, c.path("/tmp") / cls.deb.name)
        r = c.run("apt-get", "update", timeout=max(30.0, cls.deadline - time.monotonic()))
        if r.returncode != 0 or "Err:" in r.stdout:
            raise AssertionError(f"apt-get update in the chroot could not reach {MIRROR}:\n"
                                 f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        r = c.run("apt-get", "install", "-y", "--no-install-recommends", f"/tmp/{cls.deb.name}",
                  timeout=max(30.0, cls.deadline - time.monotonic()))
        cls.install_log = r.stdout + r.stderr
        if r.returncode != 0:
            raise AssertionError(f"apt-get install ./{cls.deb.name} failed:\n{cls.install_log[-4000:]}")

    @classmethod
    def _cleanup(cls):
        cls.chroot.unmount()
        if not cls.chroot.mounts:
            shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls._cleanup()
        print(f"\npackage test: {time.monotonic() - cls.t0:.0f}s in all", flush=True)

    # ------------------------------------------------------------------ the checks

    def test_1_files_and_user(self):
        c = self.chroot
        r = c.run("getent", "passwd", "mailgate")
        self.assertEqual(r.returncode, 0, "no mailgate user")
        fields = r.stdout.strip().split(":")
        self.assertLess(int(fields[2]), 1000, "not a system user")
        self.assertEqual(fields[6], "/usr/sbin/nologin")
        groups = c.run("id", "-nG", "mailgate").stdout.split()
        self.assertIn("mailgate", groups)
        self.assertIn("ssl-cert", groups)
        self.assertTrue(c.path("/lib/systemd/system/mailgate.service").is_file())
        self.assertTrue(os.access(c.path("/usr/sbin/mailgate"), os.X_OK))
        self.assertTrue(c.path("/usr/share/doc/mailgate/README.md").is_file())
        self.assertTrue(c.path("/usr/share/doc/mailgate/configuration.md").is_file())
        man = c.path("/usr/share/man/man8/mailgate.8.gz")
        self.assertTrue(man.is_file())
        self.assertEqual(gzip.decompress(man.read_bytes()),
                         (Path(__file__).resolve().parents[2] / "docs" / "mailgate.8").read_bytes())
        # Enabled as dh_installsystemd would (the symlink, without a running systemd).
        self.assertTrue(c.path("/etc/systemd/system/multi-user.target.wants/mailgate.service").is_symlink())
        conffiles = c.path("/var/lib/dpkg/info/mailgate.conffiles").read_text().split()
        self.assertIn("/etc/mailgate/mailgate.yaml", conffiles)
        st = c.path("/var/spool/mailgate").stat()
        self.assertEqual(st.st_uid, int(fields[2]))
        users = c.path("/etc/mailgate/users").stat()
        self.assertEqual(users.st_mode & 0o777, 0o640)

    def test_2_check_config(self):
        r = self.chroot.run("mailgate", "--check-config", "/etc/mailgate/mailgate.yaml")
        self.assertEqual(r.stdout.strip(), "ok", r.stdout + r.stderr)
        self.assertEqual(r.returncode, 0)

    def test_3_runs_as_the_unit_starts_it(self):
        c = self.chroot
        unit = c.path("/lib/systemd/system/mailgate.service").read_text()
        exec_start = re.search(r"(?m)^ExecStart=(.*)$", unit).group(1).split()
        self.assertEqual(exec_start[:2], ["/usr/sbin/mailgate", "--config"])
        shipped = c.path(exec_start[2]).read_text()
        # Ports free on the host (the chroot shares its network); one privileged.
        low = _low_free_port()
        high = harness.free_ports(5)
        mapping = {"25": low, "587": high[0], "465": high[1], "993": high[2], "995": high[3]}
        text = re.sub(r'"0\.0\.0\.0:(\d+)"', lambda m: f'"127.0.0.1:{mapping[m.group(1)]}"', shipped)
        text = text.replace('"127.0.0.1:9180"', f'"127.0.0.1:{high[4]}"')
        self.assertNotIn("0.0.0.0", text)
        c.path("/etc/mailgate/test.yaml").write_text(text)
        self.assertEqual(c.run("mailgate", "--check-config", "/etc/mailgate/test.yaml").stdout.strip(), "ok")

        # The service manager's notify socket, seen from inside the chroot as /run/notify.
        c.path("/run").mkdir(exist_ok=True)
        sock_path = c.path("/run/notify")
        if sock_path.exists():
            sock_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(sock_path))
        notify.settimeout(20)
        log = open(self.root / "gateway.log", "wb")
        proc = subprocess.Popen(["chroot", str(self.root), exec_start[0], "--config", "/etc/mailgate/test.yaml"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": "/run/notify"})
        try:
            try:
                msg = notify.recv(4096).decode()
            except socket.timeout:
                self.fail("no READY=1 within 20s:\n" + (self.root / "gateway.log").read_text()[-3000:])
            self.assertIn("READY=1", msg)
            # SMTP on the privileged port.
            with socket.create_connection((harness.HOST, low), timeout=5) as s:
                self.assertTrue(s.recv(512).startswith(b"220 "))
            # IMAP over TLS with the snakeoil certificate.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with socket.create_connection((harness.HOST, mapping["993"]), timeout=5) as raw:
                with ctx.wrap_socket(raw) as tls:
                    self.assertTrue(tls.recv(512).startswith(b"* OK"))
            # Dropped to the package's user.
            uid = int(c.run("id", "-u", "mailgate").stdout)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            self.assertRegex(status, rf"(?m)^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$")
            # The admin endpoint.
            with socket.create_connection((harness.HOST, high[4]), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                self.assertIn(b"200", s.recv(512))
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(20), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            notify.close()
        text = (self.root / "gateway.log").read_text()
        self.assertIn('"msg":"privileges dropped"', text)
        self.assertIn('"msg":"mailgate stopped"', text)
        self.assertNotIn("not accessible to its user", text)  # the snakeoil key via ssl-cert

    def test_4_purge(self):
        c = self.chroot
        r = c.run("apt-get", "purge", "-y", "mailgate", timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertFalse(c.path("/usr/sbin/mailgate").exists())
        self.assertFalse(c.path("/etc/mailgate/mailgate.yaml").exists())
        self.assertFalse(c.path("/var/spool/mailgate").exists())
        self.assertFalse(c.path("/etc/systemd/system/multi-user.target.wants/mailgate.service").exists())
        self.assertEqual(c.run("getent", "passwd", "mailgate").returncode, 0)  # system users stay


if __name__ == "__main__":
    unittest.main()
