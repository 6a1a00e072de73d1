#!/usr/bin/python3
"""A milter for mailgate's integration tests (Debian's python3-milter, libmilter).

It acts on the message's Subject (or the recipient's local part) and writes every
event it sees, with the macros it was given, as one JSON line to EVENTS:
  subject "add-header"      -> adds X-Milter-Added: yes
  subject "insert-header"   -> inserts X-Milter-First: first at the top
  subject "change-header"   -> changes Subject to "changed by milter"
  subject "delete-header"   -> deletes X-Remove-Me
  subject "replace-body"    -> replaces the body
  subject "quarantine"      -> quarantines
  subject "tempfail"        -> tempfail at end of body
  subject "reject"          -> 554 5.7.1 rejected by test milter
  subject "discard"         -> discards
  subject "die"             -> the process dies while the body is sent (SIGKILL)
  recipient "reject-rcpt@"  -> 550 5.1.1 for that recipient
  recipient "tempfail-rcpt@" -> tempfail for that recipient
usage: test_milter.py SOCKET EVENTS
"""
import json
import os
import signal
import sys
import threading

import Milter

SOCKET, EVENTS = sys.argv[1], sys.argv[2]
_lock = threading.Lock()


def record(**kw):
    with _lock, open(EVENTS, "a") as f:
        f.write(json.dumps(kw) + "\n")


class TestMilter(Milter.Base):
    def __init__(self):
        self.subject = ""
        self.headers = []

    def connect(self, hostname, family, hostaddr):
        record(event="connect", hostname=hostname, family=family, addr=str(hostaddr),
               client_addr=self.getsymval("{client_addr}"), j=self.getsymval("j"),
               daemon=self.getsymval("{daemon_name}"))
        return Milter.CONTINUE

    def hello(self, name):
        record(event="helo", name=name)
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *args):
        self.subject = ""
        self.headers = []
        record(event="mail", sender=mailfrom, i=self.getsymval("i"), mail_addr=self.getsymval("{mail_addr}"),
               auth_authen=self.getsymval("{auth_authen}"))
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        record(event="rcpt", rcpt=to, rcpt_addr=self.getsymval("{rcpt_addr}"))
        if "reject-rcpt@" in to:
            self.setreply("550", "5.1.1", "no such user here (test milter)")
            return Milter.REJECT
        if "tempfail-rcpt@" in to:
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def header(self, name, value):
        self.headers.append((name, value))
        if name.lower() == "subject":
            self.subject = value
        return Milter.CONTINUE

    def eoh(self):
        record(event="eoh", headers=[n for n, _ in self.headers])
        return Milter.CONTINUE

    def body(self, chunk):
        if self.subject.startswith("die"):
            record(event="dying")
            os.kill(os.getpid(), signal.SIGKILL)
        return Milter.CONTINUE

    def eom(self):
        s = self.subject
        record(event="eom", subject=s)
        if s.startswith("add-header"):
            self.addheader("X-Milter-Added", "yes")
        elif s.startswith("insert-header"):
            self.addheader("X-Milter-First", "first", 0)
        elif s.startswith("change-header"):
            self.chgheader("Subject", 1, "changed by milter")
        elif s.startswith("delete-header"):
            self.chgheader("X-Remove-Me", 1, "")
        elif s.startswith("replace-body"):
            self.replacebody(b"replaced by the test milter\nsecond line\n")
        elif s.startswith("quarantine"):
            self.quarantine("test quarantine")
        elif s.startswith("tempfail"):
            return Milter.TEMPFAIL
        elif s.startswith("reject"):
            self.setreply("554", "5.7.1", "rejected by test milter")
            return Milter.REJECT
        elif s.startswith("discard"):
            return Milter.DISCARD
        return Milter.CONTINUE

    def abort(self):
        record(event="abort")
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main():
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.QUARANTINE)
    record(event="start", pid=os.getpid())
    Milter.runmilter("mailgate-test", SOCKET, 60)


if __name__ == "__main__":
    main()
