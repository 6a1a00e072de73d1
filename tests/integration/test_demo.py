"""The README's first command: the demo (tests/integration/demo.py, run by
scripts/demo.sh) starts, mail goes in through its MX and is read back through its
IMAP and POP3 listeners, and it cleans up after itself."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from pathlib import Path

import harness

DEMO = Path(__file__).resolve().parent / "demo.py"


class DemoTest(unittest.TestCase):
    def test_demo_self_test(self):
        env = dict(os.environ, MAILGATE_BIN=harness.mailgate_bin())
        p = subprocess.run([sys.executable, str(DEMO), "--self-test"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120, env=env)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out[-4000:])
        for name in ("imaps", "imap+starttls", "pop3s", "pop3+stls"):
            self.assertIn(f"self-test {name}: ok", out)
        self.assertIn("swaks --server", out)
        work = next((l.split("files in ", 1)[1].strip() for l in out.splitlines() if "files in " in l), None)
        self.assertIsNotNone(work, out[-2000:])
        self.assertFalse(Path(work).exists(), f"{work} left behind")


if __name__ == "__main__":
    unittest.main()
