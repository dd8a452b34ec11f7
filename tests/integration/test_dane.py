"""DANE for remote delivery (RFC 7672): a sending ternd validates DNSSEC
against a trust anchor for dane.test, a zone signed at test time
(ldns-keygen + ldns-signzone) and served by tests/dns/server.py on
loopback; a second ternd is the MX. Its certificate (generated here with
openssl) is pinned by TLSA records: a matching DANE-EE record delivers
("dane-verified"), a mismatching one defers with 4.7.5 and delivers
nothing, a DANE-TA record for the CA that signed it delivers, and the same
TLSA in an unsigned zone is not used (opportunistic TLS as before). MX
hosts that are CNAMEs (RFC 7672 2.2.2) get their TLSA records from the
CNAME's target first, from their own name when the target has none."""

import datetime
import hashlib
import json
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import ROOT, SLOW, TERNCTL, make_message, send_mail as _send_mail

SERVER = ROOT / "tests" / "dns" / "server.py"

pytestmark = pytest.mark.skipif(
    not (shutil.which("ldns-keygen") and shutil.which("ldns-signzone") and shutil.which("openssl")),
    reason="ldnsutils (ldns-keygen, ldns-signzone) or openssl not installed")


def openssl(*args, cwd=None):
    return subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60,
                          cwd=cwd).stdout


def make_certs(d):
    """A CA and, signed by it, the MX's certificate for mx.dane.test (and
    the other MX names). Returns (chain file, key file, CA cert file)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "30", "-subj", "/CN=Tern DANE test CA", "-addext",
            "basicConstraints=critical,CA:TRUE", "-keyout", str(d / "ca.key"),
            "-out", str(d / "ca.crt"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=mx.dane.test", "-keyout", str(d / "mx.key"), "-out", str(d / "mx.csr"))
    (d / "ext.cnf").write_text("subjectAltName=DNS:mx.dane.test,DNS:mxbad.dane.test,"
                               "DNS:mxta.dane.test,DNS:mx.plain.test,DNS:aliasta.dane.test\n"
                               "basicConstraints=critical,CA:FALSE\n")
    openssl("x509", "-req", "-in", str(d / "mx.csr"), "-CA", str(d / "ca.crt"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "30",
            "-extfile", str(d / "ext.cnf"), "-out", str(d / "mx.crt"))
    (d / "chain.crt").write_text((d / "mx.crt").read_text() + (d / "ca.crt").read_text())
    return d / "chain.crt", d / "mx.key", d / "ca.crt"


def spki_sha256(cert):
    pub = openssl("x509", "-in", str(cert), "-noout", "-pubkey")
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True, timeout=60).stdout
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert):
    der = openssl("x509", "-in", str(cert), "-outform", "DER")
    return hashlib.sha256(der).hexdigest()


def signed_zone(d, port, ee, ta):
    zone = d / "dane.zone"
    zone.write_text(f"""$ORIGIN dane.test.
$TTL 300
@        IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 60
@        IN NS  ns.dane.test.
ns       IN A   127.0.0.1
@        IN MX  10 mx.dane.test.
mx       IN A   127.0.0.1
_{port}._tcp.mx IN TLSA 3 1 1 {ee}
bad      IN MX  10 mxbad.dane.test.
mxbad    IN A   127.0.0.1
_{port}._tcp.mxbad IN TLSA 3 1 1 {'00' * 32}
ta       IN MX  10 mxta.dane.test.
mxta     IN A   127.0.0.1
_{port}._tcp.mxta IN TLSA 2 0 1 {ta}
bogus    IN MX  10 mxbogus.dane.test.
mxbogus  IN A   127.0.0.1
_{port}._tcp.mxbogus IN TLSA 3 1 1 {'22' * 32}
; MX hosts that are CNAMEs. cn: the target's records decide (the wrong
; one at the alias is never looked at).
cn       IN MX  10 alias.dane.test.
alias    IN CNAME mxcn.dane.test.
mxcn     IN A   127.0.0.1
_{port}._tcp.mxcn IN TLSA 3 1 1 {ee}
_{port}._tcp.alias IN TLSA 3 1 1 {'00' * 32}
; cn2: none at the target, so the alias's own.
cn2      IN MX  10 alias2.dane.test.
alias2   IN CNAME mxcn2.dane.test.
mxcn2    IN A   127.0.0.1
_{port}._tcp.alias2 IN TLSA 3 1 1 {ee}
; cn3: a mismatch at the target is not rescued by the alias's records.
cn3      IN MX  10 alias3.dane.test.
alias3   IN CNAME mxcn3.dane.test.
mxcn3    IN A   127.0.0.1
_{port}._tcp.mxcn3 IN TLSA 3 1 1 {'00' * 32}
_{port}._tcp.alias3 IN TLSA 3 1 1 {ee}
; cnta: DANE-TA at the target, whose name the certificate lacks; it
; names the MX host (the alias), which counts too.
cnta     IN MX  10 aliasta.dane.test.
aliasta  IN CNAME mxtacn.dane.test.
mxtacn   IN A   127.0.0.1
_{port}._tcp.mxtacn IN TLSA 2 0 1 {ta}
""")
    key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "dane.test"], cwd=d,
                         capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    subprocess.run(["ldns-signzone", "-o", "dane.test.", str(zone), key], cwd=d,
                   capture_output=True, text=True, check=True, timeout=30)
    signed = d / "dane.zone.signed"
    # mxbogus's TLSA altered after signing: its signature no longer holds.
    text = signed.read_text()
    assert ("22" * 32) in text
    signed.write_text(text.replace("22" * 32, ee))
    return signed, d / (key + ".key")


def plain_zone(d, port, ee):
    zone = d / "plain.zone"
    zone.write_text(f"""$ORIGIN plain.test.
$TTL 300
@        IN SOA ns.plain.test. hostmaster.plain.test. 1 3600 600 86400 60
@        IN NS  ns.plain.test.
@        IN MX  10 mx.plain.test.
mx       IN A   127.0.0.1
_{port}._tcp.mx IN TLSA 3 1 1 {'11' * 32}
""")
    return zone


def ctl(t, *args):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)


def wait_for(pred, timeout=20.0):
    import time
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def maildir_find(t, local, domain, marker):
    out = []
    for f in (t.state_dir / "mail").rglob("*"):
        s = str(f)
        if f.is_file() and ("/new/" in s or "/cur/" in s) and f"/{domain}/" in s \
                and f"/{local}/" in s and marker.encode() in f.read_bytes():
            out.append(f)
    return out


def send(t, mail_from, rcpts, message):
    c = t.connect()
    try:
        return _send_mail(c, mail_from, rcpts, message)
    finally:
        c.cmd("QUIT")


@pytest.fixture
def dane_pair(tern_factory, tmp_path):
    """(sender, receiver, trust anchor): the receiver is the MX of
    dane.test (signed) and plain.test (unsigned)."""
    work = tmp_path / "dane"
    work.mkdir()
    chain, key, ca = make_certs(work)
    domains = ["dane.test", "bad.dane.test", "ta.dane.test", "bogus.dane.test", "plain.test",
               "cn.dane.test", "cn2.dane.test", "cn3.dane.test", "cnta.dane.test"]
    rx = tern_factory({
        "domains": domains, "smtp": {"verify_recipients": False},
        # REQUIRETLS mail is marked on arrival (the tern.requiretls attribute).
        "processors": {"root": [{"match": "HasMailAttribute=tern.requiretls",
                                 "mailet": "AddHeader", "name": "X-Tern-Requiretls",
                                 "value": "present"},
                                {"match": "All", "mailet": "LocalDelivery"}],
                       "error": [{"match": "All", "mailet": "RemoteDelivery"}],
                       "bounces": [{"match": "All", "mailet": "RemoteDelivery"}]},
        "tls": {"certificates": {"main": {"cert": str(chain), "key": str(key),
                                          "default": True}}},
    }, start=False, subdir="rx")
    port = rx.port("mx")
    rx.write_config()
    for dom in domains:
        ctl(rx, "account", "add", f"bob@{dom}")
    rx.start()
    signed, anchor = signed_zone(work, port, spki_sha256(chain), cert_sha256(ca))
    plain = plain_zone(work, port, spki_sha256(chain))
    dns = subprocess.Popen([sys.executable, str(SERVER), str(signed), str(plain), "--lifetime",
                            str(120 * SLOW)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        dport = int(dns.stdout.readline())
        tx = tern_factory({
            "dns": {"resolvers": [f"127.0.0.1@{dport}"], "dnssec": True,
                    "trust_anchor_file": str(anchor), "unblock_zones": ["test"]},
            "queue": {"hold": False, "port": port, "retry_min": "1s", "connect_timeout": "2s"},
            "smtp": {"relay_networks": ["127.0.0.0/8"]},
            "processors": {
                "root": [{"match": "All", "mailet": "RemoteDelivery"}],
                "transport": [{"match": "All", "mailet": "LocalDelivery"}],
                "error": [{"match": "All", "mailet": "RemoteDelivery"}],
                "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
            },
        }, start=False, subdir="tx")
        tx.write_config()
        ctl(tx, "account", "add", "alice@example.test")
        tx.start()
        yield tx, rx
    finally:
        dns.stdin.close()
        try:
            dns.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dns.kill()
            dns.wait()


def delivered_line(tx, qid, rcpt):
    m = wait_for(lambda: re.search(rf"event=delivered qid={qid} rcpt={re.escape(rcpt)} .*",
                                   tx.log(0)))
    return m.group(0) if m else None


def tlsa_policy(tx, domain):
    """The "tlsa" policy of `domain` in today's TLS-RPT file, or None."""
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    try:
        rep = json.loads((tx.state_dir / "tlsrpt" / f"{day}.json").read_text())
    except (OSError, ValueError):
        return None
    for r in rep.get("reports", []):
        for pol in r["policies"]:
            if pol["policy"]["policy-domain"] == domain and pol["policy"]["policy-type"] == "tlsa":
                return pol
    return None


def test_dane_ee_match_delivers_verified(dane_pair):
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@dane.test"], make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "dane.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@dane.test")
    assert line and "dane-verified" in line, tx.log_tail()
    assert re.search(r"event=dane qname=_\d+\._tcp\.mx\.dane\.test verdict=required", tx.log(0))
    assert re.search(rf"event=dane_session qid={r.qid} host=mx.dane.test .*tls=dane-verified",
                     tx.log(0))
    # TLS-RPT (RFC 8460): a "tlsa" policy for the MX host, its records.
    pol = wait_for(lambda: tlsa_policy(tx, "dane.test"))
    assert pol, tx.log_tail()
    assert pol["policy"]["mx-host"] == ["mx.dane.test"]
    assert pol["policy"]["policy-string"] and \
        pol["policy"]["policy-string"][0].startswith("3 1 1 "), pol
    assert pol["summary"]["total-successful-session-count"] >= 1, pol


def test_requiretls_over_dane(dane_pair):
    """RFC 8689: a DANE-verified MX that offers REQUIRETLS gets the message
    with the MAIL parameter (the receiver marks it); without the parameter
    no mark."""
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    c = tx.connect()
    try:
        c.ehlo()
        c.starttls()
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@example.test> REQUIRETLS").code == 250
        assert c.cmd("RCPT TO:<bob@dane.test>").code == 250
        r = c.data(make_message(subject=marker))
        assert r.code == 250, r
    finally:
        c.close()
    got = wait_for(lambda: maildir_find(rx, "bob", "dane.test", marker))
    assert got, tx.log_tail()
    assert b"X-Tern-Requiretls: present" in got[0].read_bytes()
    line = delivered_line(tx, r.qid, "bob@dane.test")
    assert line and "dane-verified" in line, line
    other = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@dane.test"], make_message(subject=other))
    got = wait_for(lambda: maildir_find(rx, "bob", "dane.test", other))
    assert got and b"X-Tern-Requiretls" not in got[0].read_bytes()


def test_dane_mismatch_defers_with_4_7_5(dane_pair):
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@bad.dane.test"], make_message(subject=marker))
    assert r.code == 250
    m = wait_for(lambda: re.search(rf"event=deferred qid={r.qid} rcpt=bob@bad.dane.test .*",
                                   tx.log(0)))
    assert m, tx.log_tail()
    assert "4.7.5" in m.group(0) and "TLSA" in m.group(0), m.group(0)
    assert re.search(rf"event=dane_session qid={r.qid} host=mxbad.dane.test .*tls=dane-failed",
                     tx.log(0))
    assert not maildir_find(rx, "bob", "bad.dane.test", marker)
    assert f"event=delivered qid={r.qid}" not in tx.log(0)
    pol = wait_for(lambda: tlsa_policy(tx, "bad.dane.test"))
    assert pol and pol["summary"]["total-failure-session-count"] >= 1, pol
    assert [d["result-type"] for d in pol["failure-details"]] == ["tlsa-invalid"], pol


def test_bogus_tlsa_defers(dane_pair):
    """RFC 7672 2.2: a TLSA answer that fails validation makes the host
    unusable, even though the (forged) record would match."""
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@bogus.dane.test"], make_message(subject=marker))
    assert r.code == 250
    m = wait_for(lambda: re.search(rf"event=deferred qid={r.qid} rcpt=bob@bogus.dane.test .*",
                                   tx.log(0)))
    assert m, tx.log_tail()
    assert "4.7.5" in m.group(0) and "bogus" in m.group(0), m.group(0)
    assert not maildir_find(rx, "bob", "bogus.dane.test", marker)
    pol = wait_for(lambda: tlsa_policy(tx, "bogus.dane.test"))
    assert pol and pol["failure-details"][0]["result-type"] == "dnssec-invalid", pol
    assert pol["policy"]["mx-host"] == ["mxbogus.dane.test"] or pol["policy"]["mx-host"], pol


def test_dane_ta_delivers(dane_pair):
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@ta.dane.test"], make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "ta.dane.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@ta.dane.test")
    assert line and "dane-verified" in line, line


def test_unsigned_zone_tlsa_is_ignored(dane_pair):
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    # The TLSA record there matches nothing: were it used, nothing would go.
    r = send(tx, "alice@example.test", ["bob@plain.test"], make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "plain.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@plain.test")
    assert line and "dane-verified" not in line and "TLSv1.2" in line, line
    assert "mx.plain.test verdict" not in tx.log(0)


def test_tls_required_no_skips_dane(dane_pair):
    """RFC 8689 section 3: "TLS-Required: No" lets the message past a DANE
    mismatch (opportunistic TLS); REQUIRETLS would override it."""
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@bad.dane.test"],
             make_message(subject=marker, headers=["TLS-Required: No"]))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "bad.dane.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@bad.dane.test")
    assert line and "dane-verified" not in line and "unverified" in line, line


def test_cname_mx_uses_the_targets_tlsa(dane_pair):
    """RFC 7672 2.2.2: the MX host alias.dane.test is a CNAME to
    mxcn.dane.test; the TLSA records are looked up at the target first and
    used (SNI: the target), and the wrong record at the alias is not
    looked at."""
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@cn.dane.test"], make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "cn.dane.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@cn.dane.test")
    assert line and "dane-verified" in line, line
    assert re.search(r"event=dane qname=_\d+\._tcp\.mxcn\.dane\.test verdict=required", tx.log(0))
    assert not re.search(r"event=dane qname=_\d+\._tcp\.alias\.dane\.test", tx.log(0))


def test_cname_mx_without_target_tlsa_uses_its_own(dane_pair):
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@cn2.dane.test"], make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "cn2.dane.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@cn2.dane.test")
    assert line and "dane-verified" in line, line
    log = tx.log(0)
    assert re.search(r"event=dane qname=_\d+\._tcp\.mxcn2\.dane\.test verdict=none", log), log
    assert re.search(r"event=dane qname=_\d+\._tcp\.alias2\.dane\.test verdict=required", log)


def test_cname_mx_target_mismatch_is_not_rescued(dane_pair):
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@cn3.dane.test"], make_message(subject=marker))
    assert r.code == 250
    m = wait_for(lambda: re.search(rf"event=deferred qid={r.qid} rcpt=bob@cn3.dane.test .*",
                                   tx.log(0)))
    assert m and "4.7.5" in m.group(0), tx.log_tail()
    assert not maildir_find(rx, "bob", "cn3.dane.test", marker)
    assert not re.search(r"event=dane qname=_\d+\._tcp\.alias3\.dane\.test", tx.log(0))


def test_cname_mx_dane_ta_accepts_the_mx_name(dane_pair):
    """DANE-TA checks the name: the certificate names the MX host
    (aliasta), not the CNAME target whose records are used; both are
    reference identifiers (RFC 7672 3.2.2)."""
    tx, rx = dane_pair
    marker = uuid.uuid4().hex
    r = send(tx, "alice@example.test", ["bob@cnta.dane.test"], make_message(subject=marker))
    assert r.code == 250
    assert wait_for(lambda: maildir_find(rx, "bob", "cnta.dane.test", marker)), tx.log_tail()
    line = delivered_line(tx, r.qid, "bob@cnta.dane.test")
    assert line and "dane-verified" in line, line
