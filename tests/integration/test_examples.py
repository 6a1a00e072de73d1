"""The example configurations (examples/*.yaml) pass `mailgate --check-config` as
shipped, run from the repository with the relative paths an operator would type;
the example material they name is beside them; the docs' complete variant is one
of them."""

from __future__ import annotations

import re
import subprocess
import unittest
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXPECTED = ("perimeter-mx.yaml", "imap-pop3-postgres.yaml", "nginx-auth-http.yaml",
            "policy-and-hooks.yaml")


def check_config(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([harness.mailgate_bin(), "--check-config", path], cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


class ExamplesTest(unittest.TestCase):
    def test_every_example_passes_check_config(self):
        files = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
        for name in EXPECTED:
            self.assertIn(name, files)
        for name in files:
            with self.subTest(example=name):
                r = check_config(f"examples/{name}")
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertEqual(r.stdout.strip().splitlines()[-1], "ok", r.stdout + r.stderr)

    def test_check_config_from_another_directory(self):
        # Relative paths are the configuration file's, not the working directory's.
        r = subprocess.run([harness.mailgate_bin(), "--check-config", str(EXAMPLES / "perimeter-mx.yaml")],
                           cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_every_example_is_listed_and_commented(self):
        readme = (EXAMPLES / "README.md").read_text()
        for p in EXAMPLES.glob("*.yaml"):
            text = p.read_text()
            self.assertIn(f"({p.name})", readme, f"{p.name} missing from examples/README.md")
            self.assertTrue(text.startswith("#"), f"{p.name} does not start with a comment")
            self.assertIn(f"mailgate --check-config examples/{p.name}", text)

    def test_named_material_is_marked_as_example(self):
        cert = subprocess.run(["openssl", "x509", "-in", str(EXAMPLES / "certs/example.pem"), "-noout",
                               "-subject", "-checkend", str(10 * 365 * 86400)],
                              capture_output=True, text=True)
        self.assertEqual(cert.returncode, 0, "the example certificate expires within 10 years: " + cert.stdout)
        self.assertIn("example material", cert.stdout)
        self.assertIn("Example material", (EXAMPLES / "users.passwd").read_text())
        self.assertIn("REPLACE-ME", (EXAMPLES / "admin.token").read_text())

    def test_docs_complete_variant_is_an_example_that_checks(self):
        doc = (ROOT / "docs/configuration.md").read_text()
        m = re.search(r"complete variant[^`]*`([^`]+\.yaml)`", doc)
        self.assertIsNotNone(m, "docs/configuration.md names no complete variant")
        r = check_config(m.group(1))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotRegex(doc, r"(?i)design document|DESIGN\.md|the issue\b")


if __name__ == "__main__":
    unittest.main()
