#!/usr/bin/env python3
"""A small nginx mail `auth_http` service for the integration tests.

Modelled on the Perl handler of seed 004 (mailauth.pm): it looks the mailbox up,
compares md5_hex(Auth-Pass) with the stored hash (table `mail`), picks the storage
node of the user's domain (table `maps`, column storage1), "resolves" the node's
name to an address (the handler's nslookup) and answers

    Auth-Status: OK / Auth-Server: <address> / Auth-Port: <port of Auth-Protocol>

or, for a wrong login, `Auth-Status: Invalid login or password` (+ Auth-Wait when
configured). Unlike the Perl handler it URL-decodes Auth-User and Auth-Pass (nginx
escapes space, '%' and control characters in them).

The tables live in a JSON file, re-read on every request, so a test can move a
domain to another node by rewriting it (seed 004 fails over by editing maps.storage1):

    {
      "mail":  {"alice@example.org": "<md5 hex of the password>"},
      "maps":  {"example.org": "storage-02"},
      "nodes": {"storage-02": {"host": "127.0.0.1", "imap": 10143, "pop3": 10110, "smtp": 10025}},
      "wait":  1,                                     # Auth-Wait on failures (optional)
      "rewrite": {"old@example.org": ["new@example.org", "new-password"]},
                                                      # optional Auth-User/Auth-Pass answer
      "aliases": {"info@example.org": "alice@example.org"},   # optional, recipients only
      "rcpt_tempfail": ["busy@example.org"]                   # optional, recipients only
    }

Recipient checks (Auth-Method: none, as nginx asks for `smtp_auth none`) look up the
address in Auth-SMTP-To ("RCPT TO:<local@domain>"): a mailbox or alias of a domain
in `maps` is OK (+ the node's smtp port), another address of such a domain
"550 5.1.1", any other domain "550 5.7.1" (relaying), an address in
`rcpt_tempfail` "451 4.3.0" (Auth-Error-Code).

Every request is appended to --log as one JSON object: the request line and its
headers, with Auth-Pass replaced by "ok"/"bad" (a password is never logged), and
the answer's Auth-Status.

    auth_http_responder.py --listen 127.0.0.1:PORT --config tables.json --log requests.jsonl

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes


def decode(value: str) -> str:
    # nginx escapes with %XX; the raw bytes are UTF-8 in practice.
    return unquote_to_bytes(value).decode("utf-8", "replace")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "auth-http-responder/1"
    config_path = ""
    log_path = ""
    log_lock = threading.Lock()

    def log_message(self, fmt, *args):  # keep stderr quiet; requests go to the JSON log
        pass

    def tables(self) -> dict:
        with open(self.config_path, encoding="utf-8") as f:
            return json.load(f)

    def recipient_answer(self, t: dict) -> list[tuple[str, str]]:
        to = self.headers.get("Auth-SMTP-To", "")
        address = to[to.find("<") + 1:to.rfind(">")] if "<" in to and ">" in to else ""
        if address.startswith('"'):  # a quoted local part
            local, _, domain = address.rpartition("@")
            address = local[1:-1].replace('\\"', '"').replace("\\\\", "\\") + "@" + domain
        domain = address.rpartition("@")[2].lower()
        address = address.rpartition("@")[0] + "@" + domain
        if address in t.get("rcpt_tempfail", []):
            return [("Auth-Status", "Temporary lookup failure"), ("Auth-Error-Code", "451 4.3.0")]
        if domain not in t.get("maps", {}):
            return [("Auth-Status", "Relay access denied"), ("Auth-Error-Code", "550 5.7.1")]
        if address not in t.get("mail", {}) and address not in t.get("aliases", {}):
            return [("Auth-Status", "Mailbox unavailable"), ("Auth-Error-Code", "550 5.1.1")]
        node = t.get("nodes", {}).get(t["maps"][domain], {})
        return [("Auth-Status", "OK"), ("Auth-Server", node.get("host", "127.0.0.1")),
                ("Auth-Port", str(node.get("smtp", 25)))]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        t = self.tables()
        if self.headers.get("Auth-Method", "") == "none":
            answer = self.recipient_answer(t)
            self.log_and_answer(answer, auth_ok=False)
            return
        mailbox = decode(self.headers.get("Auth-User", ""))
        password = decode(self.headers.get("Auth-Pass", ""))
        protocol = self.headers.get("Auth-Protocol", "")

        stored = t.get("mail", {}).get(mailbox)
        auth_ok = stored is not None and stored == hashlib.md5(password.encode()).hexdigest()

        answer: list[tuple[str, str]] = []
        if auth_ok:
            domain = mailbox.split("@", 1)[1] if "@" in mailbox else ""
            node_name = t.get("maps", {}).get(domain)
            node = t.get("nodes", {}).get(node_name or "", {})
            if not node:
                # The Perl handler's db_fail: OK towards a dead address.
                answer = [("Auth-Status", "OK"), ("Auth-Server", "127.0.0.1"), ("Auth-Port", "1")]
            else:
                answer = [("Auth-Status", "OK"), ("Auth-Server", node["host"]),
                          ("Auth-Port", str(node.get(protocol, 0)))]
                if mailbox in t.get("rewrite", {}):
                    new_user, new_pass = t["rewrite"][mailbox]
                    answer += [("Auth-User", new_user), ("Auth-Pass", new_pass)]
        else:
            answer = [("mail:", mailbox), ("Auth-Status", "Invalid login or password")]
            if t.get("wait"):
                answer.append(("Auth-Wait", str(t["wait"])))

        self.log_and_answer(answer, auth_ok)

    def log_and_answer(self, answer: list[tuple[str, str]], auth_ok: bool) -> None:
        record = {"request": self.requestline,
                  "headers": {k: (("ok" if auth_ok else "bad") if k.lower() == "auth-pass" else v)
                              for k, v in self.headers.items()},
                  "header_names": list(self.headers.keys()),
                  "status": dict(answer).get("Auth-Status")}
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

        self.send_response(200)
        for name, value in answer:
            if name.endswith(":"):  # the Perl handler's stray "mail:" header, kept as sent
                name = name[:-1]
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html")
        self.end_headers()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind would call socket.getfqdn(): a reverse DNS lookup
        # that can hang where there is no resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="host:port")
    ap.add_argument("--config", required=True, help="JSON tables, re-read per request")
    ap.add_argument("--log", required=True, help="JSON lines, one per request")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    Handler.config_path = args.config
    Handler.log_path = args.log
    server = Server((host.strip("[]"), int(port)), Handler)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"auth_http responder on {args.listen}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
