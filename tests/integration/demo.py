"""Local demo: mailgate in front of a real Dovecot on loopback.

Run through scripts/demo.sh. Starts Dovecot (imap, pop3, lmtp) with demo users,
makes a CA and a certificate, starts mailgate with implicit-TLS and STARTTLS
listeners for IMAP and POP3, an SMTP MX listener (STARTTLS) that delivers into
Dovecot over LMTP, a submission listener (STARTTLS, AUTH) that relays through that
MX, and the admin listener (/metrics, /status); sends a welcome message through the
MX, prints how to connect (only commands this machine has what they need for), and
stays in the foreground (showing mailgate's log) until Ctrl-C.

  --self-test   send through the MX, read back with curl through every listener, then
                exit (0 = all worked)
  --keep        leave the temporary directory in place at exit
  --free-ports  any free ports, not the memorable 10xxx ones (for tests)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

USERS = {
    "alice@example.org": "alice-password",
    "bob@example.org": "bob-password",
}
PREFERRED = {"imaps": 10993, "imap": 10143, "pop3s": 10995, "pop3": 10110, "smtp": 10025,
             "submission": 10587, "admin": 10180}


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


def swaks_missing(tls: bool) -> str | None:
    """Why the printed swaks commands would not work here, or None."""
    if not shutil.which("swaks"):
        return "swaks is not installed (apt-get install swaks)"
    if tls and subprocess.run(["perl", "-MNet::SSLeay", "-e", "1"], stdin=subprocess.DEVNULL,
                              capture_output=True).returncode != 0:
        return "swaks --tls needs Net::SSLeay (apt-get install libnet-ssleay-perl)"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--free-ports", action="store_true")
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
        ports = pick_ports(preferred=not (args.self_test or args.free_ports))
        config = harness.mailgate_config(
            certificates=[cert], users_file=users_file, threads="auto",
            listeners=[
                {"name": "imaps", "protocol": "imap", "port": ports["imaps"], "tls": "implicit"},
                {"name": "imap", "protocol": "imap", "port": ports["imap"], "tls": "starttls"},
                {"name": "pop3s", "protocol": "pop3", "port": ports["pop3s"], "tls": "implicit"},
                {"name": "pop3", "protocol": "pop3", "port": ports["pop3"], "tls": "starttls"},
                {"name": "mx", "protocol": "smtp", "port": ports["smtp"], "tls": "starttls"},
                {"name": "submission", "protocol": "submission", "port": ports["submission"],
                 "tls": "starttls"},
            ],
            backends=[{"name": "storage-01", "imap": dovecot.imap_port, "pop3": dovecot.pop3_port,
                       "lmtp": dovecot.lmtp_port, "health_interval": "5s",
                       "health_timeout": "2s"},
                      # Submissions are relayed to the gateway's own MX, which delivers
                      # mail for example.org to Dovecot (a real site names its MTA here).
                      {"name": "outbound", "smtp": ports["smtp"], "deliver": "smtp",
                       "health_interval": "30s", "health_timeout": "2s"}],
            routes=[{"domain": "*", "primary": "storage-01"}],
            failure_delay="1s")
        config += "  submission_relay: outbound\n"
        config = harness.admin_block(ports["admin"], work, token=None) + config
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
        # Only what works here: swaks at all, and swaks --tls (Net::SSLeay).
        no_swaks, no_swaks_tls = swaks_missing(tls=False), swaks_missing(tls=True)
        smtp_lines = ""
        if no_swaks:
            smtp_lines = f"\nSending mail through the MX and the submission listener: {no_swaks}.\n"
        else:
            smtp_lines = """
Send mail through mailgate's MX (recipients are checked, the message is delivered to
Dovecot over LMTP), then read it as above with MAILINDEX=2:
"""
            if no_swaks_tls:
                smtp_lines += f"  (with STARTTLS: {no_swaks_tls})\n"
            else:
                smtp_lines += (f"  swaks --server {h}:{ports['smtp']} --tls --to alice@example.org"
                               " --from you@example.net\n")
            # Without TLS the plain line is the one that sends alice the mail read above.
            plain_to = "alice@example.org" if no_swaks_tls else "bob@example.org"
            smtp_lines += (f"  swaks --server {h}:{ports['smtp']} --to {plain_to} --from you@example.net\n"
                           f"  swaks --server {h}:{ports['smtp']} --to nobody@example.org"
                           "     # 550 5.1.1, unknown mailbox\n")
            if not no_swaks_tls:
                smtp_lines += f"""
Submit mail as a user (STARTTLS, AUTH PLAIN; relayed through the MX to Dovecot):
  swaks --server {h}:{ports['submission']} --tls --auth PLAIN --auth-user bob@example.org --auth-password bob-password --from bob@example.org --to alice@example.org
"""
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
{smtp_lines}
Talk IMAP yourself:
  openssl s_client -quiet -crlf -connect {h}:{ports['imap']} -starttls imap -CAfile {ca_pem}
  openssl s_client -quiet -crlf -connect {h}:{ports['imaps']} -servername localhost -CAfile {ca_pem}
then type:  a LOGIN alice@example.org alice-password
            b SELECT INBOX
            c FETCH 1 BODY[]
            d LOGOUT

The admin listener: Prometheus metrics and the status page (open it in a browser):
  curl -s http://{h}:{ports['admin']}/metrics
  http://{h}:{ports['admin']}/status

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
