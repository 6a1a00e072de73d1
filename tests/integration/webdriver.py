"""A small W3C WebDriver client (urllib only) for Debian's chromedriver and
headless Chromium: enough to load a page, find elements by CSS, type and click.
Every call and every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import harness

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C element reference key


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not shutil.which("chromedriver"):
        return "chromedriver is missing (scripts/deps.sh installs chromium and chromium-driver)"
    if not (chromium_binary() or shutil.which("chromium")):
        return "chromium is missing (scripts/deps.sh installs chromium and chromium-driver)"
    return None


def chromium_binary() -> str | None:
    # Debian's /usr/bin/chromium is a shell wrapper; chromedriver wants the binary.
    for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if p and os.access(p, os.X_OK):
            return p
    return None


class WebDriverError(AssertionError):
    pass


class Browser:
    def __init__(self, workdir: str | os.PathLike, timeout: float = 30.0):
        self.dir = Path(workdir)
        self.timeout = timeout
        self.port = harness.free_port()
        self.log = open(self.dir / "chromedriver.log", "wb")
        self.proc = subprocess.Popen(["chromedriver", f"--port={self.port}"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.session = None
        try:
            harness.wait_port(self.port, 15)
            args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--window-size=1280,1024",
                    f"--user-data-dir={self.dir / 'chromium-profile'}"]
            caps = {"browserName": "chrome", "goog:chromeOptions": {"args": args}}
            if chromium_binary():
                caps["goog:chromeOptions"]["binary"] = chromium_binary()
            r = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, timeout=60)
            self.session = r["sessionId"]
            self._call("POST", f"/session/{self.session}/timeouts",
                       {"pageLoad": 20000, "script": 10000, "implicit": 0})
        except BaseException:
            self.quit()
            raise

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: HTTP {e.code}: {e.read()[:800]!r}") from None

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    # -- navigation and the page
    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    @property
    def url(self) -> str:
        return self._call("GET", self._s("/url"))

    @property
    def title(self) -> str:
        return self._call("GET", self._s("/title"))

    @property
    def source(self) -> str:
        return self._call("GET", self._s("/source"))

    def script(self, code: str, *args):
        return self._call("POST", self._s("/execute/sync"), {"script": code, "args": list(args)})

    # -- elements
    def find_all(self, css: str, within: str | None = None) -> list[str]:
        base = self._s(f"/element/{within}/elements") if within else self._s("/elements")
        return [e[ELEMENT] for e in self._call("POST", base, {"using": "css selector", "value": css})]

    def find(self, css: str, within: str | None = None) -> str:
        found = self.find_all(css, within)
        if not found:
            raise WebDriverError(f"no element matches {css!r}")
        return found[0]

    def wait_find(self, css: str, timeout: float = 10.0) -> str:
        return harness.wait_for(lambda: (self.find_all(css) or [None])[0], timeout, what=f"element {css!r}")

    def wait_gone(self, css: str, timeout: float = 10.0) -> None:
        harness.wait_for(lambda: not self.find_all(css), timeout, what=f"element {css!r} gone")

    def text(self, el: str) -> str:
        return self._call("GET", self._s(f"/element/{el}/text"))

    def attribute(self, el: str, name: str):
        return self._call("GET", self._s(f"/element/{el}/attribute/{name}"))

    def click(self, el: str) -> None:
        self._call("POST", self._s(f"/element/{el}/click"), {})

    def type(self, el: str, text: str) -> None:
        self._call("POST", self._s(f"/element/{el}/clear"), {})
        self._call("POST", self._s(f"/element/{el}/value"), {"text": text})

    def quit(self) -> None:
        if self.session:
            try:
                self._call("DELETE", self._s(""), timeout=15)
            except Exception:
                pass
            self.session = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.quit()
