"""The passwd-file directory: every supported password scheme logs in through the
gateway; a line with an unknown scheme never authenticates."""

import unittest

import harness
from fixtures import GatewayTestCase

SCHEMES = ["PLAIN", "PLAIN-MD5", "SHA256-CRYPT", "SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID"]
USERS = {f"{s.lower()}@example.org": f"pw-{s.lower()}-secret" for s in SCHEMES}
USERS["eve@example.org"] = "eve-password"
AUTH_FAILED = "NO [AUTHENTICATIONFAILED] Authentication failed."


class SchemesTest(GatewayTestCase):
    USERS = USERS

    @classmethod
    def gateway_passwd(cls, path):
        lines = []
        for s in SCHEMES:
            user = f"{s.lower()}@example.org"
            lines.append(f"{user}:{harness.hash_password(USERS[user], s)}")
        # Line 7: an unknown scheme. Must never authenticate (and is reported at load).
        lines.append("eve@example.org:{ROT13}rir-cnffjbeq")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def login(self, user, password):
        c, _ = harness.imap_client(self.port("imaps"), tls=True, context=self.env.context)
        try:
            return c.command("a", f"LOGIN {harness.imap_quote(user)} {harness.imap_quote(password)}")[-1]
        finally:
            c.close()

    def test_each_scheme_logs_in(self):
        for s in SCHEMES:
            user = f"{s.lower()}@example.org"
            with self.subTest(scheme=s):
                self.assertTrue(self.login(user, USERS[user]).startswith("a OK"))
                self.assertEqual(self.login(user, USERS[user] + "x"), f"a {AUTH_FAILED}")

    def test_unknown_scheme_never_authenticates(self):
        self.assertEqual(self.login("eve@example.org", "eve-password"), f"a {AUTH_FAILED}")
        self.assertEqual(self.login("eve@example.org", "rir-cnffjbeq"), f"a {AUTH_FAILED}")
        self.assertEqual(self.login("eve@example.org", "{ROT13}rir-cnffjbeq"), f"a {AUTH_FAILED}")

    def test_unknown_scheme_reported_with_line_number(self):
        text = self.env.gateway.log_text()
        self.assertRegex(text, r"users\.passwd\D{1,3}7\b",
                         "the unknown-scheme line (7) of the passwd-file is not reported:\n"
                         + text[-2000:])


if __name__ == "__main__":
    unittest.main()
