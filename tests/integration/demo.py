"""Local demo: mailgate in front of a real Dovecot on loopback.

Run through scripts/demo.sh. Starts Dovecot (imap, pop3, lmtp) with demo users,
makes a CA and a certificate, starts mailgate with implicit-TLS and STARTTLS
listeners for IMAP and POP3 and an SMTP MX listener (STARTTLS) that delivers into
Dovecot over LMTP, sends a welcome message through that MX, prints how to connect,
and stays in the foreground (showing mailgate's log) until Ctrl-C.

  --self-test   send through the MX, read back with curl through every listener, then
                exit (0 = all worked)
  --keep        leave the temporary directory in place at exit
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

USERS = {
    "alice@example.org": "alice-password",
    "bob@example.org": "bob-password",
}
PREFERRED = {"imaps": 10993, "imap": 10143, "pop3s": 10995, "pop3": 10110, "smtp": 10025}


def pick_ports(preferred: bool = True) -> dict[str, int]:
    """The memorable PREFERRED ports where free; any free ports for the self-test, which
    runs next to other test files (a fixed port would be shared state between them)."""
    if not preferred:
        return dict(zip(PREFERRED, harness.free_ports(len(PREFERRED))))
    ports = {}
    for name, port in PREFERRED.items():
        ports[name] = port if not harness.port_open(port) and _bindable(port) else harness.free_port()
    return ports


def _bindable(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((harness.HOST, port))
            return True
        except OSError:
            return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = Path(harness.make_workdir("mailgate-demo-"))
    dovecot = gateway = None
    stopping = False

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # even if started with SIGINT ignored
    try:
        print(f"demo: files in {work}")
        certs = work / "certs"
        ca = harness.make_ca(certs, "mailgate demo CA")
        cert = harness.make_cert(ca, certs, ["localhost", "mail.example.org"])

        dovecot = harness.Dovecot(work / "dovecot", USERS, name="demo")
        dovecot.start()
        print(f"demo: Dovecot on 127.0.0.1 imap {dovecot.imap_port}, pop3 {dovecot.pop3_port}, "
              f"lmtp {dovecot.lmtp_port}")

        users_file = harness.write_passwd(work / "users.passwd", USERS)
        ports = pick_ports(preferred=not args.self_test)
        config = harness.mailgate_config(
            certificates=[cert], users_file=users_file, threads="auto",
            listeners=[
                {"name": "imaps", "protocol": "imap", "port": ports["imaps"], "tls": "implicit"},
                {"name": "imap", "protocol": "imap", "port": ports["imap"], "tls": "starttls"},
                {"name": "pop3s", "protocol": "pop3", "port": ports["pop3s"], "tls": "implicit"},
                {"name": "pop3", "protocol": "pop3", "port": ports["pop3"], "tls": "starttls"},
                {"name": "mx", "protocol": "smtp", "port": ports["smtp"], "tls": "starttls"},
            ],
            backends=[{"name": "storage-01", "imap": dovecot.imap_port, "pop3": dovecot.pop3_port,
                       "lmtp": dovecot.lmtp_port, "health_interval": "5s",
                       "health_timeout": "2s"}],
            routes=[{"domain": "*", "primary": "storage-01"}],
            failure_delay="1s")
        gateway = harness.Mailgate(work, config)
        gateway.start()

        for user in USERS:
            # Through mailgate's own MX: recipient checked, message spooled, delivered
            # to Dovecot over LMTP, 250 only after Dovecot's.
            with smtplib.SMTP(harness.HOST, ports["smtp"], timeout=30) as s:
                s.ehlo("demo.example.net")
                s.starttls(context=harness.client_context(ca.cert))
                s.ehlo("demo.example.net")
                s.sendmail("welcome@example.net", [user],
                           (f"From: welcome@example.net\r\nTo: {user}\r\nSubject: Welcome to mailgate\r\n"
                            f"\r\nHello {user.split('@')[0]},\r\n\r\n"
                            "this message came in through mailgate's MX (SMTP with STARTTLS), was\r\n"
                            "delivered to Dovecot over LMTP, and you are reading it through mailgate.\r\n"
                            ).encode())

        ca_pem = ca.cert
        h = harness.HOST
        print(f"""
mailgate is running (pid {gateway.pid}) in front of Dovecot. Demo users:
  alice@example.org / alice-password
  bob@example.org   / bob-password

Read the welcome message over IMAP with implicit TLS:
  curl --cacert {ca_pem} -u alice@example.org:alice-password 'imaps://{h}:{ports['imaps']}/INBOX;MAILINDEX=1'

The same over IMAP with STARTTLS, and over POP3 (implicit TLS and STLS):
  curl --ssl-reqd --cacert {ca_pem} -u alice@example.org:alice-password 'imap://{h}:{ports['imap']}/INBOX;MAILINDEX=1'
  curl --cacert {ca_pem} -u alice@example.org:alice-password 'pop3s://{h}:{ports['pop3s']}/1'
  curl --ssl-reqd --cacert {ca_pem} -u bob@example.org:bob-password 'pop3://{h}:{ports['pop3']}/'

Send mail through mailgate's MX (STARTTLS; recipients are checked, the message is
delivered to Dovecot over LMTP), then read it as above with MAILINDEX=2:
  swaks --server {h}:{ports['smtp']} --tls --to alice@example.org --from you@example.net
  swaks --server {h}:{ports['smtp']} --to nobody@example.org     # 550 5.1.1, unknown mailbox

Talk IMAP yourself:
  openssl s_client -quiet -crlf -connect {h}:{ports['imap']} -starttls imap -CAfile {ca_pem}
  openssl s_client -quiet -crlf -connect {h}:{ports['imaps']} -servername localhost -CAfile {ca_pem}
then type:  a LOGIN alice@example.org alice-password
            b SELECT INBOX
            c FETCH 1 BODY[]
            d LOGOUT

Config: {gateway.config_path}
Log:    {gateway.log_path} (session lines are shown below)
Press Ctrl-C to stop and clean up.
""", flush=True)

        if args.self_test:
            return self_test(ca_pem, ports)

        offset = gateway.log_path.stat().st_size if gateway.log_path.exists() else 0
        while True:
            time.sleep(0.5)
            if not gateway.is_running():
                print(f"demo: mailgate exited with status {gateway.proc.returncode}:\n"
                      + gateway.log_text()[-3000:], file=sys.stderr)
                return 1
            with open(gateway.log_path, "rb") as f:
                f.seek(offset)
                data = f.read()
            if data:
                offset += len(data)
                sys.stdout.write(data.decode("utf-8", "replace"))
                sys.stdout.flush()
    except KeyboardInterrupt:
        stopping = True
        print("\ndemo: stopping")
        return 0
    except Exception as e:  # start-up failure: show why
        print(f"demo: {e}", file=sys.stderr)
        if gateway is not None:
            print(gateway.log_text()[-3000:], file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if gateway is not None:
            gateway.stop()
        if dovecot is not None:
            dovecot.stop()
        if args.keep:
            print(f"demo: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if stopping:
            print("demo: stopped, cleaned up")


def self_test(ca_pem: str, ports: dict[str, int]) -> int:
    h = harness.HOST
    checks = [
        ("imaps", [f"imaps://{h}:{ports['imaps']}/INBOX;MAILINDEX=1", "--cacert", ca_pem,
                   "-u", "alice@example.org:alice-password"], "Welcome to mailgate"),
        ("imap+starttls", [f"imap://{h}:{ports['imap']}/INBOX;MAILINDEX=1", "--ssl-reqd",
                           "--cacert", ca_pem, "-u", "alice@example.org:alice-password"],
         "Welcome to mailgate"),
        ("pop3s", [f"pop3s://{h}:{ports['pop3s']}/1", "--cacert", ca_pem,
                   "-u", "alice@example.org:alice-password"], "Welcome to mailgate"),
        ("pop3+stls", [f"pop3://{h}:{ports['pop3']}/1", "--ssl-reqd", "--cacert", ca_pem,
                       "-u", "bob@example.org:bob-password"], "Welcome to mailgate"),
    ]
    failed = 0
    for name, args, expect in checks:
        r = harness.curl(*args, timeout=10)
        ok = r.returncode == 0 and expect in r.stdout
        failed += not ok
        print(f"self-test {name}: {'ok' if ok else 'FAILED'}"
              + ("" if ok else f" (curl exit {r.returncode}: {r.stderr.strip()})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
