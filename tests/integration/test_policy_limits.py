"""Limits of the policy layer (DESIGN.md, "Policy and content": limits, bans) against
real clients and a real Dovecot node:

- a concurrency limit per client network: sessions over it get the protocol's
  refusal (SMTP 421 4.7.0, IMAP * BYE [UNAVAILABLE], POP3 -ERR [IN-USE]) with a
  reference, the others are served, another address is served meanwhile, and closing
  sessions frees their slots;
- authentication failures per client network: a growing delay, then a ban refused
  at connect on every protocol (even with the right password), another address still
  served; each protocol from its own address, plus one address whose failures are
  spread over IMAP, POP3 and submission (the key is client.net, not the listener);
- distinct_credentials: the same wrong user+password repeated does not count again;
- limits.defaults.exempt: a trusted address is never limited nor banned;
- bans listed by GET /bans and lifted by `mailgate --config F --unban NET` and by
  POST /bans/lift?net=NET.

Each test uses client source addresses of its own (sockets bound to 127.x.y.z), so
counters never mix between tests. BuiltinDefaultsTest checks the built-in rules
(a config without limits)."""

from __future__ import annotations

import os
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness
import policy_support as ps
from fixtures import ALICE, ALICE_PW, USERS

CONCURRENCY = 20
OPENED = 60
DELAY_MIN_S = 1.0           # af-delay: { action: delay, delay: 1s..4s }
DELAY_RATE = 3              # af-delay: rate 3/1m
BAN_RATE = 6                # af-ban: rate 6/10m
FAILURE_DELAY = "100ms"     # the directory's own failure delay (not the policy's)

POLICY = f"""
lists:
  trusted: {{ cidrs: [127.0.0.30/32] }}
limits:
  defaults: {{ ipv4_prefix: 32, exempt: [trusted] }}
  rules:
    - {{ name: conn, count: connections, key: [client.net], concurrency: {CONCURRENCY}, on_exceed: tempfail }}
    - {{ name: af-delay, count: auth_failures, key: [client.net], rate: {DELAY_RATE}/1m, distinct_credentials: true,
        on_exceed: {{ action: delay, delay: 1s..4s }} }}
    - {{ name: af-ban, count: auth_failures, key: [client.net], rate: {BAN_RATE}/10m, distinct_credentials: true,
        on_exceed: ban }}
  bans: {{ ttl: 10m }}
"""

# Refusals (prefixes) when a concurrency limit is exceeded, and when banned.
CONN_REFUSAL = {"imap": "* BYE [UNAVAILABLE]", "pop3": "-ERR [IN-USE]", "smtp": "421 4.7.0"}
BAN_REFUSAL = {"imap": "* BYE", "pop3": "-ERR", "submission": "421 4.7.0", "smtp": "421 4.7.0"}


class LimitsEnv:
    """One Dovecot node; mailgate with plaintext imap, pop3, submission and mx listeners,
    an admin listener, and the given policy sections."""

    def __init__(self, name: str, policy: str):
        self.dir = Path(harness.make_workdir(f"mailgate-{name}-"))
        self.policy = policy
        self.dovecot = None
        self.gateway = None

    def start(self) -> "LimitsEnv":
        try:
            self.dovecot = harness.Dovecot(self.dir / "storage", USERS, name="pl").start()
            users_file = str(self.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            names = ["imap", "pop3", "submission", "smtp", "admin", "relay"]
            self.ports = dict(zip(names, harness.free_ports(len(names))))
            h, p = harness.HOST, self.ports
            plain = "tls: none, allow_plaintext_auth: true, max_auth_attempts: 3"
            text = f"""server: {{ threads: 2, shutdown_grace: 2s }}
log: {{ level: info, format: json }}
{harness.admin_block(p['admin'], self.dir)}listeners:
  - {{ name: imap, protocol: imap, listen: ["{h}:{p['imap']}"], {plain} }}
  - {{ name: pop3, protocol: pop3, listen: ["{h}:{p['pop3']}"], {plain} }}
  - {{ name: submission, protocol: submission, listen: ["{h}:{p['submission']}"], {plain} }}
  - {{ name: smtp, protocol: smtp, listen: ["{h}:{p['smtp']}"], tls: none }}
directory:
  driver: file
  file: {{ users: "{users_file}", failure_delay: {FAILURE_DELAY} }}
backends:
  - name: storage-01
    host: {h}
    ports: {{ imap: {self.dovecot.imap_port}, pop3: {self.dovecot.pop3_port}, lmtp: {self.dovecot.lmtp_port} }}
    health: {{ interval: 1s, timeout: 1s }}
  - name: relay
    host: {h}
    ports: {{ smtp: {p['relay']} }}
    deliver: smtp
    health: {{ interval: 1h, timeout: 1s }}
routing:
  static:
    - {{ domain: "*", primary: storage-01 }}
  submission_relay: relay
"""
            self.gateway = harness.Mailgate(self.dir, ps.with_policy(text, self.policy)).start()
            harness.wait_port(self.ports["admin"], 10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.dovecot is not None:
            self.dovecot.stop()
        harness.remove_workdir(self.dir)

    def diagnostics(self) -> str:
        out = []
        if self.gateway is not None:
            out.append("--- mailgate log (tail) ---\n" + self.gateway.log_text()[-8000:])
        if self.dovecot is not None:
            out.append("--- dovecot log (tail) ---\n" + self.dovecot.log_text()[-2000:])
        return "\n".join(out)


class PolicyLimitsBase(harness.LogsOnFailure, unittest.TestCase):
    POLICY = POLICY
    env: LimitsEnv
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.env = LimitsEnv(cls.__name__.lower(), cls.POLICY).start()

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def diagnostics(self) -> str:
        return self.env.diagnostics()

    def attempt(self, protocol: str, source: str, user: str, password: str) -> ps.Attempt:
        return ps.login_attempt(protocol, self.env.ports[protocol], source, user, password)

    def assertServed(self, protocol: str, source: str):
        a = self.attempt(protocol, source, ALICE, ALICE_PW)
        self.assertEqual(a.kind, "ok", f"{source} should log in over {protocol}: {a}")

    def assertBannedAtConnect(self, protocol: str, source: str, password: str = ALICE_PW):
        a = self.attempt(protocol, source, ALICE, password)
        self.assertEqual(a.kind, "refused", f"{source} should be refused at connect over {protocol}: {a}")
        line = a.lines[-1]
        self.assertTrue(line.startswith(BAN_REFUSAL[protocol]),
                        f"ban refusal over {protocol} should start {BAN_REFUSAL[protocol]!r}: {a}")
        self.assertTrue(ps.has_ref(line), f"ban refusal without a (ref ...): {a}")


class ConnectionLimitTest(PolicyLimitsBase):
    """conn: concurrency 20 per client.net, tempfail. Each protocol from its own address,
    so the three checks are independent of each other and of the order they run in."""

    def open_many(self, protocol: str, source: str, n: int) -> list[tuple[ps.SourceClient, str | None]]:
        port = self.env.ports[protocol]
        # A second of its own for this flood's refusal log lines (rate-limited per second).
        time.sleep(1.05)
        clients = []
        for _ in range(n):
            c = ps.SourceClient(port, source, timeout=10)
            self.addCleanup(c.close)
            clients.append(c)
        # One deadline for all the first lines: a gateway that answers none of them
        # fails the test in 15 s, not 60 x 10 s.
        deadline = time.monotonic() + 15
        return [(c, ps.first_line(c, max(0.2, deadline - time.monotonic()))) for c in clients]

    def check_concurrency(self, protocol: str, source: str):
        ok_prefix, refusal = ps.GREETING_OK[protocol], CONN_REFUSAL[protocol]
        got = self.open_many(protocol, source, OPENED)
        greeted = [c for c, line in got if line is not None and line.startswith(ok_prefix)]
        refused = [(c, line) for c, line in got if line is not None and line.startswith(refusal)]
        other = [line for c, line in got if not (line and (line.startswith(ok_prefix) or line.startswith(refusal)))]
        summary = (f"{protocol} from {source}: {len(greeted)} greeted, {len(refused)} refused, "
                   f"other replies {other[:5]}; first refusal {refused[0][1] if refused else None!r}")
        self.assertEqual(other, [], summary)
        self.assertEqual(len(greeted), CONCURRENCY, summary)
        self.assertEqual(len(refused), OPENED - CONCURRENCY, summary)
        for _, line in refused:
            self.assertTrue(ps.has_ref(line), f"refusal without (ref ...): {line!r}")
        # The refused ones are closed after the reply.
        self.assertTrue(refused[0][0].at_eof(5), f"refused {protocol} connection left open: {refused[0][1]!r}")
        # The reference of a refusal is in the log. Refusal lines are rate-limited (a
        # flood must not flood the log), and the other protocols' floods may have used
        # this second's share: some of these refusals' references must be there.
        refs = [ps.ref_of(line) for _, line in refused]
        harness.wait_for(lambda: any(r in self.env.gateway.log_text() for r in refs), 5,
                         what=f"one of the refs {refs[:3]}... of the {protocol} refusals in the log")

        # Meanwhile another address is served.
        if protocol == "smtp":
            c = ps.SourceClient(self.env.ports["smtp"], "127.0.0.21")
            self.addCleanup(c.close)
            greeting = ps.smtp_reply(c)
            self.assertTrue(greeting and greeting[-1].startswith("220"), f"127.0.0.21 on smtp: {greeting}")
            c.send_line("EHLO client.example.com")
            ehlo = ps.smtp_reply(c)
            self.assertTrue(ehlo and ehlo[-1].startswith("250"), f"EHLO from 127.0.0.21: {ehlo}")
        else:
            self.assertServed(protocol, "127.0.0.21")

        # Closing 5 sessions frees 5 slots (and only 5).
        for c in greeted[:5]:
            c.close()
        port = self.env.ports[protocol]
        served, probes, deadline = 0, [], time.monotonic() + 10
        while served < 5 and time.monotonic() < deadline and len(probes) < 200:
            c = ps.SourceClient(port, source, timeout=10)
            self.addCleanup(c.close)
            line = ps.first_line(c, 10)
            probes.append(line)
            if line is not None and line.startswith(ok_prefix):
                served += 1
            else:
                c.close()
                time.sleep(0.05)
        self.assertEqual(served, 5, f"after closing 5 sessions, 5 new ones should be served; probes: {probes[-5:]}")
        c = ps.SourceClient(port, source, timeout=10)
        self.addCleanup(c.close)
        line = ps.first_line(c, 10)
        self.assertTrue(line is not None and line.startswith(refusal),
                        f"the 21st session after refilling should be refused with {refusal!r}: {line!r}")

    def test_imap_concurrency(self):
        self.check_concurrency("imap", "127.0.0.20")

    def test_pop3_concurrency(self):
        self.check_concurrency("pop3", "127.0.1.20")

    def test_smtp_concurrency(self):
        self.check_concurrency("smtp", "127.0.2.20")

    def test_trusted_address_is_not_limited(self):
        got = self.open_many("imap", "127.0.0.30", CONCURRENCY + 5)
        lines = [line for _, line in got]
        self.assertTrue(all(l and l.startswith("* OK") for l in lines),
                        f"trusted 127.0.0.30 should get {CONCURRENCY + 5} greetings: "
                        f"{[l for l in lines if not (l and l.startswith('* OK'))][:5]}")


class AuthFailureLimitTest(PolicyLimitsBase):
    """af-delay (3/1m → delay 1s..4s) and af-ban (6/10m → ban), both per client.net
    with distinct_credentials: true; bans: { ttl: 10m } (long enough to outlast the
    file; nothing here waits for a ban to end)."""

    # address → the protocols of its attempts, in turn
    BANNED = {
        "127.0.0.22": ["imap"],
        "127.0.1.22": ["pop3"],
        "127.0.2.22": ["submission"],
        "127.0.3.22": ["imap", "pop3", "submission"],   # one address across protocols
    }
    _banned: dict | None = None
    _lock = threading.Lock()

    @classmethod
    def fail_until_banned(cls, source: str, protocols: list[str]) -> list[ps.Attempt]:
        """Distinct wrong passwords (a new connection each) until a connection is
        refused at connect, at most BAN_RATE + 4 attempts."""
        out = []
        for i in range(BAN_RATE + 4):
            protocol = protocols[i % len(protocols)]
            a = ps.login_attempt(protocol, cls.env.ports[protocol], source, ALICE, f"wrong-{i}",
                                 timeout=8)  # the delay is at most 4 s
            out.append(a)
            if a.kind in ("refused", "ok"):
                break
        return out

    @classmethod
    def banned(cls) -> dict[str, list[ps.Attempt]]:
        """The four addresses failed until banned, in parallel (once per class)."""
        with cls._lock:
            if cls._banned is None:
                with ThreadPoolExecutor(len(cls.BANNED)) as pool:
                    futures = {src: pool.submit(cls.fail_until_banned, src, protos)
                               for src, protos in cls.BANNED.items()}
                    cls._banned = {src: f.result() for src, f in futures.items()}
            return cls._banned

    def describe(self, attempts: list[ps.Attempt]) -> str:
        return "\n  " + "\n  ".join(str(a) for a in attempts)

    def test_failures_delay_then_ban(self):
        for source, attempts in self.banned().items():
            with self.subTest(source=source, protocols=self.BANNED[source]):
                story = self.describe(attempts)
                self.assertEqual(attempts[-1].kind, "refused", f"{source} was never refused at connect:{story}")
                failures = attempts[:-1]
                self.assertTrue(all(a.kind in ("failed", "closed") for a in failures), story)
                self.assertIn(len(failures), (BAN_RATE, BAN_RATE + 1),
                              f"ban after {len(failures)} failures, expected {BAN_RATE} (the limit reached) "
                              f"or {BAN_RATE + 1} (exceeded):{story}")
                refusal = attempts[-1]
                self.assertTrue(refusal.lines[-1].startswith(BAN_REFUSAL[refusal.protocol]),
                                f"ban refusal should start {BAN_REFUSAL[refusal.protocol]!r}:{story}")
                self.assertTrue(ps.has_ref(refusal.lines[-1]), f"ban refusal without (ref ...):{story}")
                # The delay grows: the first failures are answered at once, later ones
                # after at least DELAY_MIN_S, each no sooner than the one before it.
                answered = [a for a in failures if a.kind == "failed"]
                self.assertGreaterEqual(len(answered), DELAY_RATE + 1, story)
                first = answered[0].seconds
                self.assertLess(first, DELAY_MIN_S - 0.2, f"first failure already delayed:{story}")
                delayed = answered[DELAY_RATE:]
                self.assertGreaterEqual(delayed[0].seconds, DELAY_MIN_S - 0.1,
                                        f"failure {DELAY_RATE + 1} not delayed by {DELAY_MIN_S}s:{story}")
                self.assertGreater(answered[-1].seconds, first + DELAY_MIN_S - 0.2, story)
                for before, after in zip(delayed, delayed[1:]):
                    self.assertGreaterEqual(after.seconds, before.seconds - 0.25,
                                            f"the delay should not shrink:{story}")

    def test_banned_address_refused_even_with_the_right_password(self):
        self.banned()
        for source in ("127.0.2.22", "127.0.3.22"):   # (the lifting test unbans the others)
            for protocol in ("imap", "pop3", "submission"):
                with self.subTest(source=source, protocol=protocol):
                    self.assertBannedAtConnect(protocol, source)
        # The smtp (MX) listener refuses a banned address too.
        c = ps.SourceClient(self.env.ports["smtp"], "127.0.3.22")
        self.addCleanup(c.close)
        greeting = ps.smtp_reply(c)
        self.assertTrue(greeting and greeting[-1].startswith("421 4.7.0"), f"banned on the MX: {greeting}")
        # Another address is served.
        for protocol in ("imap", "pop3", "submission"):
            self.assertServed(protocol, "127.0.4.21")

    def test_ban_listing_and_lifting(self):
        self.banned()
        admin = self.env.ports["admin"]
        status, body = ps.admin_request(admin, "/bans")
        self.assertEqual(status, 200, body)
        for source in self.BANNED:
            self.assertTrue(ps.lists_address(body, source), f"GET /bans does not list {source}:\n{body}")
        self.assertFalse(ps.lists_address(body, "127.0.4.21"), body)

        # The command line lifts a ban (through the running gateway's admin listener).
        r = harness.run_mailgate("--config", str(self.env.gateway.config_path), "--unban", "127.0.0.22")
        self.assertEqual(r.returncode, 0, f"--unban: exit {r.returncode}\n{r.stdout}{r.stderr}")
        harness.wait_for(lambda: self.attempt("imap", "127.0.0.22", ALICE, ALICE_PW).kind == "ok", 10,
                         interval=0.3, what="127.0.0.22 served after --unban")

        # So does POST /bans/lift?net=...
        status, body = ps.admin_request(admin, "/bans/lift?net=127.0.1.22", method="POST")
        self.assertIn(status, (200, 204), f"POST /bans/lift: {status} {body}")
        self.assertServed("pop3", "127.0.1.22")

        status, body = ps.admin_request(admin, "/bans")
        self.assertEqual(status, 200, body)
        self.assertFalse(ps.lists_address(body, "127.0.0.22"), f"lifted ban still listed:\n{body}")
        self.assertFalse(ps.lists_address(body, "127.0.1.22"), f"lifted ban still listed:\n{body}")
        self.assertTrue(ps.lists_address(body, "127.0.2.22"), f"other bans should stay:\n{body}")

    def test_same_wrong_credentials_do_not_count_again(self):
        source = "127.0.0.23"
        attempts = [self.attempt("imap", source, ALICE, "always-the-same-wrong") for _ in range(10)]
        story = self.describe(attempts)
        self.assertTrue(all(a.kind == "failed" for a in attempts), f"10 identical failures:{story}")
        self.assertServed("imap", source)

    def test_trusted_address_is_never_delayed_nor_banned(self):
        source = "127.0.0.30"
        attempts = [self.attempt("imap", source, ALICE, f"trusted-wrong-{i}") for i in range(BAN_RATE + 3)]
        story = self.describe(attempts)
        self.assertTrue(all(a.kind == "failed" for a in attempts), story)
        self.assertTrue(all(a.seconds < DELAY_MIN_S - 0.2 for a in attempts), f"trusted delayed:{story}")
        self.assertServed("imap", source)
        self.assertServed("pop3", source)
        status, body = ps.admin_request(self.env.ports["admin"], "/bans")
        self.assertFalse(ps.lists_address(body, source), body)


class BuiltinDefaultsTest(PolicyLimitsBase):
    """No limits section: the built-in rules apply (docs/configuration.md, "Built-in
    rules"): from the 4th distinct wrong password a minute the failure reply waits 2 s
    and more, and the 11th in ten minutes bans the address. The attempts run side by
    side, so the test waits for the longest delay once, not for their sum."""

    # An empty lists section keeps the harness from exempting loopback (harness.py).
    POLICY = "lists: {}\n"

    def test_defaults_delay_then_ban(self):
        import concurrent.futures
        source = "127.0.5.22"
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            attempts = list(pool.map(
                lambda i: self.attempt("imap", source, ALICE, f"default-wrong-{i}"), range(12)))
        story = "\n  " + "\n  ".join(str(a) for a in sorted(attempts, key=lambda a: a.seconds))
        answered = sorted(a.seconds for a in attempts if a.kind == "failed")
        # The first three are answered at once (failure_delay), later ones wait 2 s, 4 s, ...
        self.assertGreaterEqual(len(answered), 3, f"too few failures answered:{story}")
        self.assertLess(answered[0], 1.0, f"the first failure was delayed:{story}")
        self.assertGreaterEqual(answered[-1], 3.5, f"no growing delay:{story}")
        # The eleventh failure bans the address: its session is closed.
        self.assertTrue(any(a.kind == "closed" for a in attempts), f"no session closed by the ban:{story}")
        self.assertBannedAtConnect("imap", source)
        self.assertBannedAtConnect("pop3", source)
        self.assertBannedAtConnect("submission", source)
        self.assertServed("imap", "127.0.5.21")


if __name__ == "__main__":
    unittest.main()
