"""Real clients against ternd: python's smtplib, swaks, and openssl
s_client -starttls smtp."""

import os
import re
import select
import shutil
import smtplib
import subprocess
import time
from email.message import EmailMessage

import pytest

from conftest import HELO, HOSTNAME, IO_TIMEOUT, SLOW, client_context
from helpers import cipher_matches, received_headers


def smtp(tern, name="mx"):
    s = smtplib.SMTP("127.0.0.1", tern.port(name), local_hostname=HELO, timeout=IO_TIMEOUT)
    return s


def email(subject="smtplib", to="postmaster@example.test"):
    m = EmailMessage()
    m["From"] = "alice@example.org"
    m["To"] = to
    m["Subject"] = subject
    m.set_content("Hello.\n\n.leading dot\n")
    return m


def test_smtplib_send_message(tern):
    with smtp(tern) as s:
        s.ehlo()
        assert s.has_extn("pipelining") and s.has_extn("chunking") and s.has_extn("8bitmime")
        refused = s.send_message(email())
        assert refused == {}
        code, msg = s.noop()
        assert code == 250
    assert tern.spool_count() == 1


def test_smtplib_starttls(tern, certs):
    with smtp(tern) as s:
        # verify the chain; not the name (smtplib connected by address)
        s.starttls(context=client_context(cafile=certs.path("main.crt"), verify=True,
                                          check_hostname=False))
        s.ehlo()
        assert not s.has_extn("starttls")
        s.send_message(email("smtplib tls"))
    assert tern.spool_count() == 1


def test_smtplib_implicit_tls(tern_factory):
    # submission takes mail from authenticated clients or relay_networks
    t = tern_factory({"smtp": {"relay_networks": ["127.0.0.0/8"]}})
    with smtplib.SMTP_SSL("127.0.0.1", t.port("submissions"), local_hostname=HELO,
                          timeout=IO_TIMEOUT, context=client_context()) as s:
        s.ehlo()
        s.send_message(email("smtps"))
    assert t.spool_count() == 1


def test_smtplib_refused_recipients(tern):
    with smtp(tern) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("alice@example.org", ["x@elsewhere.example.org"], email().as_string())
        code, _ = e.value.recipients["x@elsewhere.example.org"]
        assert code == 554
        refused = s.sendmail("alice@example.org", ["x@elsewhere.example.org",
                                                   "postmaster@example.test"],
                             email().as_string())
        assert list(refused) == ["x@elsewhere.example.org"]
    assert tern.spool_count() == 1


def test_smtplib_utf8(tern):
    m = email("Grüße", to="δοκιμή@example.test")
    with smtp(tern) as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        # smtplib adds SMTPUTF8 and BODY=8BITMIME itself for such addresses
        s.send_message(m, from_addr="用户@example.org", to_addrs=["δοκιμή@example.test"])
    assert tern.spool_count() == 1


def swaks(*args):
    assert shutil.which("swaks"), "swaks is not installed (tools/setup installs it)"
    return subprocess.run(["swaks", "--helo", HELO, "--from", "alice@example.org",
                           "--timeout", str(IO_TIMEOUT), *args],
                          capture_output=True, timeout=30 * SLOW, stdin=subprocess.DEVNULL)


def queued(out):
    m = re.search(r"queued as ([A-Za-z0-9]+)", out)
    return m.group(1) if m else None


def test_swaks_plain(tern):
    p = swaks("--server", "127.0.0.1", "--port", str(tern.port()),
              "--to", "postmaster@example.test")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    assert queued(out) in tern.spool_list()


def test_swaks_pipelining(tern):
    p = swaks("--server", "127.0.0.1", "--port", str(tern.port()), "--pipeline",
              "--to", "a@example.test,b@example.test")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    q = queued(out)
    line = [ln for ln in tern.spool_list().splitlines() if q and q in ln]
    assert line and "a@example.test" in line[0] and "b@example.test" in line[0], out


def test_swaks_starttls(tern):
    p = swaks("--server", "127.0.0.1", "--port", str(tern.port()), "--tls",
              "--to", "postmaster@example.test")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    m = re.search(r"TLS started with cipher (TLSv1\.2):([A-Z0-9-]+)", out)
    assert m, out
    ours = received_headers(tern.spool_show(queued(out)))[0]
    assert "TLSv1.2" in ours and cipher_matches(m.group(2), ours), (m.group(0), ours)


def test_swaks_implicit_tls(tern_factory):
    tern = tern_factory({"smtp": {"relay_networks": ["127.0.0.1/32"]}})
    p = swaks("--server", "127.0.0.1", "--port", str(tern.port("submissions")), "--tlsc",
              "--to", "postmaster@example.test")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    assert queued(out)


def test_swaks_relay_denied(tern):
    p = swaks("--server", "127.0.0.1", "--port", str(tern.port()),
              "--to", "someone@elsewhere.example.org")
    out = p.stdout.decode(errors="replace")
    assert p.returncode != 0
    assert re.search(r"<\*\*\s+554 5\.7\.1", out), out


class SClient:
    """openssl s_client driven line by line."""

    def __init__(self, port):
        self.p = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
             "-name", HELO, "-servername", HOSTNAME, "-crlf", "-quiet", "-brief"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = b""
        self.err = b""

    def expect(self, pattern, timeout=None):
        rx = re.compile(pattern.encode())
        deadline = time.monotonic() + (timeout or IO_TIMEOUT)
        while not rx.search(self.out):
            left = deadline - time.monotonic()
            assert left > 0, f"s_client: no {pattern!r} in {self.out!r} / {self.err!r}"
            r, _, _ = select.select([self.p.stdout, self.p.stderr], [], [], left)
            for f in r:
                chunk = os.read(f.fileno(), 65536)
                if f is self.p.stdout:
                    self.out += chunk
                else:
                    self.err += chunk
                if not chunk and f is self.p.stdout:
                    assert rx.search(self.out), f"s_client ended: {self.out!r} {self.err!r}"
        m = rx.search(self.out)
        self.out = self.out[m.end():]
        return m

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()


def test_openssl_s_client_starttls(tern):
    s = SClient(tern.port())
    try:
        s.send(f"EHLO {HELO}")
        s.expect(r"250 [^\r\n]*\r?\n")
        s.send("MAIL FROM:<alice@example.org>")
        s.expect(r"250 ")
        s.send("RCPT TO:<postmaster@example.test>")
        s.expect(r"250 ")
        s.send("DATA")
        s.expect(r"354 ")
        s.send("Subject: s_client\n\nhello through openssl\n.")
        m = s.expect(r"250 2\.0\.0 [^\r\n]*queued as ([A-Za-z0-9]+)")
        qid = m.group(1).decode()
        s.send("QUIT")
        s.expect(r"221 ")
        assert s.p.wait(10 * SLOW) == 0
        err = s.err + s.p.stderr.read()
        assert b"TLSv1.2" in err, err
        cipher = re.search(rb"Ciphersuite: (\S+)", err).group(1).decode()
    finally:
        s.close()
    ours = received_headers(tern.spool_show(qid))[0]
    assert "TLSv1.2" in ours and cipher_matches(cipher, ours), (cipher, ours)
