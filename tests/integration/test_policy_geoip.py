"""GeoIP conditions of the policy layer (DESIGN.md, "Policy and content": geoip, lists
of countries, `country` and `asn` conditions) on SMTP listeners behind a PROXY
protocol balancer: the client address the policy sees is the one in the PROXY v1
header, so any address (documentation networks, real ones) can be tested on loopback.

- tiny databases written by mmdb_writer.pl give exact answers: 198.51.100.0/24 and
  2001:db8:1::/48 are KP, 198.51.100.0/24 is AS 64500;
- a connect rule on the country refuses with its reply and a (ref ...), and closes;
  other addresses are served (a message delivered to a Dovecot node);
- an asn condition refuses;
- a corrupt database on SIGHUP: the old one stays in use, and the log says so;
- the real CC0 database of ip-location-db (scripts/geoip-data.sh) puts 175.45.176.1
  in KP: refused (skipped, with the reason, when the files are absent)."""

from __future__ import annotations

import shutil
import smtplib
import time
import unittest
from pathlib import Path

import harness
import policy_support as ps
from fixtures import ALICE, USERS

REFUSAL = "554 5.7.1 Not accepted from your network"
ASN_REFUSAL = "554 5.7.1 Not accepted from your AS"
KP_V4, KP_V6 = "198.51.100.7", "2001:db8:1::7"
CLEAN_V4, CLEAN_V6 = "192.0.2.1", "2001:db8:2::1"
AS64500 = "198.51.100.9"
AS64501 = "203.0.113.5"


def country_policy(v4: str, v6: str, asn: str | None = None) -> str:
    asn_db = f"\n  asn: {{ mmdb: [\"{asn}\"], field: autonomous_system_number }}" if asn else ""
    asn_rule = (f"""
  - {{ name: as-blocked, stage: connect, when: {{ listener: mx_asn, asn: 64500 }}, then: reject,
      reply: "{ASN_REFUSAL}" }}""" if asn else "")
    return f"""
lists:
  blocked_cc: {{ countries: [KP] }}
geoip:
  country: {{ mmdb: ["{v4}", "{v6}"], field: country_code }}{asn_db}
policies:
  - {{ name: mx-blocked, stage: connect, when: {{ listener: mx, country: {{ in: blocked_cc }} }}, then: reject,
      reply: "{REFUSAL}" }}{asn_rule}
"""


def write_test_dbs(d: Path) -> tuple[str, str, str]:
    v4 = ps.write_mmdb(d / "country-v4.mmdb", {"198.51.100.0/24": {"country_code": "KP"},
                                               "192.0.2.0/24": {"country_code": "NL"}})
    v6 = ps.write_mmdb(d / "country-v6.mmdb", {"2001:db8:1::/48": {"country_code": "KP"},
                                               "2001:db8:2::/48": {"country_code": "NL"}})
    asn = ps.write_mmdb(d / "asn.mmdb", {"198.51.100.0/24": {"autonomous_system_number": 64500},
                                         "203.0.113.0/24": {"autonomous_system_number": 64501}})
    return v4, v6, asn


class GeoipBase(harness.LogsOnFailure, unittest.TestCase):
    """mailgate with proxy_protocol smtp listeners mx and mx_asn, optionally a Dovecot
    node behind them (WITH_NODE)."""

    WITH_NODE = False
    maxDiff = None

    @classmethod
    def policy(cls) -> str:
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        why = ps.perl_mmdb_missing()
        if why:
            raise unittest.SkipTest(why)
        cls.dir = Path(harness.make_workdir(f"mailgate-{cls.__name__.lower()}-"))
        cls.dovecot, cls.gateway = None, None
        try:
            geo = cls.dir / "geo"
            geo.mkdir()
            cls.geo = geo
            cls.prepare_data(geo)
            certs = cls.dir / "certs"
            ca = harness.make_ca(certs)
            cert = harness.make_cert(ca, certs, ["mx.example.org"])
            users_file = str(cls.dir / "users.passwd")
            harness.write_passwd(users_file, USERS)
            if cls.WITH_NODE:
                cls.dovecot = harness.Dovecot(cls.dir / "storage", USERS, name="geo").start()
                backend = {"name": "storage-01", "imap": cls.dovecot.imap_port, "lmtp": cls.dovecot.lmtp_port}
            else:
                closed = harness.free_port()
                backend = {"name": "storage-01", "imap": closed, "lmtp": closed, "health_interval": "1h"}
            names = ["mx", "mx_asn"]
            cls.ports = dict(zip(names, harness.free_ports(len(names))))
            listeners = [{"name": n, "protocol": "smtp", "port": cls.ports[n], "proxy_protocol": True}
                         for n in names]
            text = harness.mailgate_config(certificates=[cert], listeners=listeners, users_file=users_file,
                                           backends=[backend], routes=[{"domain": "*", "primary": "storage-01"}])
            cls.gateway = harness.Mailgate(cls.dir, ps.with_policy(text, cls.policy())).start()
        except BaseException:
            cls._stop()
            raise

    @classmethod
    def prepare_data(cls, geo: Path) -> None:
        cls.v4, cls.v6, cls.asn = write_test_dbs(geo)

    @classmethod
    def _stop(cls):
        if getattr(cls, "gateway", None) is not None:
            cls.gateway.stop()
        if getattr(cls, "dovecot", None) is not None:
            cls.dovecot.stop()
        harness.remove_workdir(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls._stop()

    def diagnostics(self) -> str:
        out = f"--- mailgate log (tail) ---\n{self.gateway.log_text()[-6000:]}"
        if self.dovecot is not None:
            out += f"\n--- dovecot log (tail) ---\n{self.dovecot.log_text()[-2000:]}"
        return out

    # -- helpers
    def greeting(self, client_ip: str, listener: str = "mx") -> tuple[ps.SourceClient, list[str]]:
        c = ps.SourceClient(self.ports[listener], header=ps.proxy_v1(client_ip, dport=self.ports[listener]))
        self.addCleanup(c.close)
        return c, ps.smtp_reply(c, 10)

    def assertRefused(self, client_ip: str, reply: str = REFUSAL, listener: str = "mx"):
        c, lines = self.greeting(client_ip, listener)
        what = f"PROXY client {client_ip} on {listener}: {lines}"
        self.assertTrue(lines, f"closed without a reply: {what}")
        self.assertTrue(lines[-1].startswith(reply + " (ref "), f"expected {reply!r} (ref ...): {what}")
        self.assertTrue(ps.has_ref(lines[-1]), what)
        self.assertTrue(c.at_eof(5), f"the connection should close after the refusal: {what}")
        ref = ps.ref_of(lines[-1])
        harness.wait_for(lambda: ref in self.gateway.log_text(), 5, what=f"ref {ref} in the log ({what})")

    def assertServed(self, client_ip: str, listener: str = "mx"):
        c, lines = self.greeting(client_ip, listener)
        what = f"PROXY client {client_ip} on {listener}: {lines}"
        self.assertTrue(lines and lines[-1].startswith("220"), f"expected a 220 greeting: {what}")
        c.send_line("EHLO client.example.com")
        ehlo = ps.smtp_reply(c, 10)
        self.assertTrue(ehlo and ehlo[-1].startswith("250"), f"EHLO: {ehlo} ({what})")
        c.send_line("QUIT")


class GeoipCountryTest(GeoipBase):
    WITH_NODE = True

    @classmethod
    def policy(cls) -> str:
        return country_policy(cls.v4, cls.v6, cls.asn)

    def test_kp_ipv4_refused_at_connect(self):
        self.assertRefused(KP_V4)

    def test_kp_ipv6_refused_at_connect(self):
        self.assertRefused(KP_V6)

    def test_other_country_served_and_delivered(self):
        for ip in (CLEAN_V4, CLEAN_V6, "203.0.113.77"):   # (the last: in no country database)
            with self.subTest(client=ip):
                self.assertServed(ip)
        subject = f"geoip served {time.time_ns()}"
        header = ps.proxy_v1(CLEAN_V4, dport=self.ports["mx"])

        class Proxied(smtplib.SMTP):
            def _get_socket(self, host, port, timeout):
                return ps.SourceClient(port, header=header, timeout=timeout).sock

        with Proxied(harness.HOST, self.ports["mx"], timeout=15) as s:
            s.ehlo("client.example.com")
            refused = s.sendmail("someone@example.com", [ALICE],
                                 f"From: someone@example.com\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\nHi.\r\n")
        self.assertEqual(refused, {})
        local, _, domain = ALICE.partition("@")
        base = self.dovecot.mail_dir / domain / local / "Maildir"
        harness.wait_for(lambda: any(subject.encode() in p.read_bytes()
                                     for sub in ("new", "cur") for p in (base / sub).glob("*")),
                         10, what=f"{subject!r} delivered")

    def test_country_rule_only_on_its_listener(self):
        # mx_asn has no country rule: a KP address whose AS is not 64500 is served there.
        self.assertServed(CLEAN_V4, "mx_asn")
        self.assertServed(KP_V6, "mx_asn")

    def test_asn_condition(self):
        self.assertRefused(AS64500, ASN_REFUSAL, "mx_asn")
        self.assertServed(AS64501, "mx_asn")


class GeoipReloadTest(GeoipBase):
    """A corrupt country database on SIGHUP: the old one stays in use."""

    @classmethod
    def policy(cls) -> str:
        return country_policy(cls.v4, cls.v6)

    def test_corrupt_database_on_reload_keeps_the_old_one(self):
        self.assertRefused(KP_V4)
        Path(self.v4).write_bytes(b"this is not a MaxMind DB\n" * 100)
        self.gateway.reload()

        def reload_failed_lines():
            return [l for l in self.gateway.log_lines()
                    if "country-v4.mmdb" in str(l) and str(l.get("level", "")).lower() in ("warn", "warning", "error")]
        lines = harness.wait_for(reload_failed_lines, 10, what="a warn/error log line naming country-v4.mmdb")
        self.assertTrue(lines)
        self.assertTrue(self.gateway.is_running(), "the gateway stopped on a corrupt database")
        self.assertRefused(KP_V4)
        self.assertRefused(KP_V6)
        self.assertServed(CLEAN_V4)


class GeoipRealDataTest(GeoipBase):
    """The CC0 ip-location-db country database (scripts/geoip-data.sh)."""

    REAL_KP = "175.45.176.1"
    REAL_OTHER = "8.8.8.8"

    @classmethod
    def prepare_data(cls, geo: Path) -> None:
        src = ps.geoip_cache_dir()
        files = [src / "geo-whois-asn-country-ipv4.mmdb", src / "geo-whois-asn-country-ipv6.mmdb"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise unittest.SkipTest(f"GeoIP data absent ({', '.join(missing)}): run scripts/geoip-data.sh")
        kp = ps.mmdb_lookup(str(files[0]), cls.REAL_KP)
        if not kp or kp.get("country_code") != "KP":
            raise unittest.SkipTest(f"{cls.REAL_KP} is not KP in this version of the database: {kp}")
        other = ps.mmdb_lookup(str(files[0]), cls.REAL_OTHER)
        if not other or other.get("country_code") in (None, "KP"):
            raise unittest.SkipTest(f"{cls.REAL_OTHER} has no usable country in this database: {other}")
        cls.v4, cls.v6 = (str(geo / f.name) for f in files)
        for f in files:
            shutil.copyfile(f, geo / f.name)

    @classmethod
    def policy(cls) -> str:
        return country_policy(cls.v4, cls.v6)

    def test_real_kp_address_refused(self):
        self.assertRefused(self.REAL_KP)
        self.assertServed(self.REAL_OTHER)


if __name__ == "__main__":
    unittest.main()
