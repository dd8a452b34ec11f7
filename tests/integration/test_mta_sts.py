"""MTA-STS (RFC 8461) and TLS-RPT data (RFC 8460) in remote delivery: a
sending ternd looks up `_mta-sts` TXT records on the loopback DNS server
(tests/dns/server.py), fetches the policies over HTTPS from a small
python3 http.server + ssl server in this test (certificates from a test CA
made with openssl at test time), and delivers to a second ternd that is
the MX of every test domain. The receiver serves a certificate valid for
mx.good.sts.test (signed by the test CA) by SNI and its self-signed default
certificate for every other name."""

import datetime
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, SLOW, make_message
from test_queue import LOCAL, ctl, maildir_find, send_mail, spool_count, wait_for

SERVER = ROOT / "tests" / "dns" / "server.py"

DOMAINS = ("good", "nomatch", "selfsigned", "testing", "testgood", "nopolicy", "redirect",
           "webpki", "big", "html")

POLICIES = {
    "good.sts.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.good.sts.test\r\nmax_age: 86400\r\n",
    # The policy names a host that is not the domain's MX.
    "nomatch.sts.test": "version: STSv1\nmode: enforce\nmx: *.elsewhere.sts.test\nmax_age: 86400\n",
    "selfsigned.sts.test": "version: STSv1\nmode: enforce\nmx: *.selfsigned.sts.test\nmax_age: 86400\n",
    "testing.sts.test": "version: STSv1\nmode: testing\nmx: mx.testing.sts.test\nmax_age: 86400\n",
    "testgood.sts.test": "version: STSv1\nmode: testing\nmx: mx.testgood.sts.test\nmax_age: 600\n",
}


SLOW_DOMAIN = "good.sts.test"

# Publish a `_mta-sts` record: the policy domains, one whose web server
# redirects, one whose web server has no certificate for its name.
# Two more serve what is not a policy: one over 64 KiB, one as text/html.
STS_TXT = (*POLICIES, "redirect.sts.test", "webpki.sts.test", "big.sts.test", "html.sts.test")
WEB_NAMES = (*POLICIES, "redirect.sts.test", "big.sts.test", "html.sts.test")


def zone_text():
    z = """$ORIGIN sts.test.
$TTL 60
@       IN SOA ns.sts.test. hostmaster.sts.test. 1 3600 600 86400 60
@       IN NS  ns.sts.test.
ns      IN A   127.0.0.1
"""
    for d in DOMAINS:
        z += f"{d} IN MX 10 mx.{d}.sts.test.\nmx.{d} IN A 127.0.0.1\n"
        if f"{d}.sts.test" in STS_TXT:
            z += f"mta-sts.{d} IN A 127.0.0.1\n"
            z += f'_mta-sts.{d} IN TXT "v=STSv1; id=20261122a;"\n'
    z += '_smtp._tls.testing IN TXT "v=TLSRPTv1; " "rua=mailto:tlsrpt@testing.sts.test"\n'
    return z


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A test CA; leaf certificates for the policy hosts and for
    mx.good.sts.test, both signed by it."""
    d = tmp_path_factory.mktemp("sts-ca")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-sha256",
            "-subj", "/CN=Tern STS Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))

    def leaf(name, sans):
        ext = d / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=" +
                       ",".join(f"DNS:{s}" for s in sans) + "\n")
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={sans[0]}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
                "-extfile", str(ext), "-out", str(d / f"{name}.crt"))

    leaf("web", [f"mta-sts.{x}" for x in WEB_NAMES])
    leaf("mx", ["mx.good.sts.test", "mx.testgood.sts.test"])
    return d


class PolicyServer:
    """https://mta-sts.<domain>/.well-known/mta-sts.txt on a loopback port."""

    def __init__(self, ca):
        fetches = self.fetches = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
                fetches.append((domain, self.path))
                if domain == "redirect.sts.test":
                    # RFC 8461 3.3: a redirect must not be followed.
                    self.send_response(301)
                    self.send_header("Location", "https://mta-sts.good.sts.test/.well-known/mta-sts.txt")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = POLICIES.get(domain)
                ctype = "text/plain"
                if domain == "big.sts.test":
                    body = POLICIES["good.sts.test"] + "x: " + "y" * 100 + "\n" * 70000
                elif domain == "html.sts.test":
                    body, ctype = "<html>" + POLICIES["good.sts.test"], "text/html"
                if domain == SLOW_DOMAIN:
                    time.sleep(1.0)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(ca / "web.crt"), str(ca / "web.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web(ca):
    s = PolicyServer(ca)
    yield s
    s.stop()


@pytest.fixture
def dns(tmp_path):
    zone = tmp_path / "sts.zone"
    zone.write_text(zone_text())
    proc = subprocess.Popen([sys.executable, str(SERVER), str(zone), "--origin", "sts.test.",
                             "--lifetime", str(120 * SLOW)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield port
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def pair(tern_factory, dns, web, ca):
    """(sender, receiver): the receiver is the MX of every *.sts.test."""
    rx = tern_factory({
        "domains": [f"{d}.sts.test" for d in DOMAINS],
        "smtp": {"verify_recipients": True},
        "tls": {"certificates": {
            "sts": {"cert": str(ca / "mx.crt"), "key": str(ca / "mx.key"),
                    "subjects": ["mx.good.sts.test", "mx.testgood.sts.test"]},
        }},
        **LOCAL}, start=False, subdir="rx")
    rx.write_config()
    for d in DOMAINS:
        ctl(rx, "account", "add", f"bob@{d}.sts.test")
    rx.start()
    tx = tern_factory({
        "dns": {"resolvers": [f"127.0.0.1@{dns}"], "dnssec": False, "unblock_zones": ["test"]},
        "queue": {"hold": False, "port": rx.config["listeners"][0]["port"], "retry_min": "1s",
                  "connect_timeout": "2s", "mta_sts_ca_file": str(ca / "ca.crt"),
                  "mta_sts_port": web.port},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "processors": {
            "root": [{"match": "All", "mailet": "RemoteDelivery"}],
            "transport": [{"match": "All", "mailet": "LocalDelivery"}],
            "error": [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
    }, start=False, subdir="tx")
    tx.write_config()
    tx.start()
    return tx, rx


def send(tx, domain):
    marker = uuid.uuid4().hex
    r = send_mail(tx, "alice@example.test", [f"bob@{domain}"], make_message(subject=marker))
    assert r.code == 250, r
    return r.qid, marker


def delivered_line(tx, qid):
    return wait_for(lambda: re.search(rf"event=delivered qid={qid} .*", tx.log(0)))


def deferred_line(tx, qid):
    return wait_for(lambda: re.search(rf"event=deferred qid={qid} .*", tx.log(0)))


def tlsrpt(tx):
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    p = tx.state_dir / "tlsrpt" / f"{day}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def policy_of(report, domain, ptype):
    for rep in (report or {}).get("reports", []):
        for pol in rep["policies"]:
            if pol["policy"]["policy-domain"] == domain and pol["policy"]["policy-type"] == ptype:
                return rep, pol
    return None, None


def test_enforce_verified_mx_is_delivered(pair, web):
    tx, rx = pair
    # The policy server answers this domain slowly (SLOW_DOMAIN): the
    # lookups of the three messages overlap one fetch in flight, and wait
    # for it rather than fetching again.
    sent = [send(tx, "good.sts.test") for _ in range(3)]
    for qid, marker in sent:
        assert wait_for(lambda: maildir_find(rx, "bob", "good.sts.test", marker)), tx.log_tail()
        line = delivered_line(tx, qid)
        assert line and "TLSv1.2 verified" in line.group(0), tx.log_tail()
    assert "event=policy_fetched domain=good.sts.test id=20261122a mode=enforce" in tx.log(0)
    assert web.fetches.count(("good.sts.test", "/.well-known/mta-sts.txt")) == 1, web.fetches
    # Later mail: the cached policy (same TXT id) serves without a fetch.
    qid, marker = send(tx, "good.sts.test")
    assert wait_for(lambda: maildir_find(rx, "bob", "good.sts.test", marker)), tx.log_tail()
    assert web.fetches.count(("good.sts.test", "/.well-known/mta-sts.txt")) == 1, web.fetches
    # TLS-RPT: one successful session under the sts policy.
    rep = wait_for(lambda: policy_of(tlsrpt(tx), "good.sts.test", "sts")[1])
    assert rep and rep["summary"]["total-successful-session-count"] >= 1, tlsrpt(tx)
    assert rep["policy"]["mx-host"] == ["mx.good.sts.test"]
    assert "mode: enforce" in rep["policy"]["policy-string"]


def test_enforce_mx_not_in_policy_is_deferred(pair):
    tx, rx = pair
    qid, marker = send(tx, "nomatch.sts.test")
    line = deferred_line(tx, qid)
    assert line, tx.log_tail()
    assert "4.7.5 MX host mx.nomatch.sts.test does not match the MTA-STS policy" in line.group(0)
    assert not maildir_find(rx, "bob", "nomatch.sts.test", marker)
    assert spool_count(tx) == 1
    # never connected: the receiver saw no session from the sender for it
    assert "nomatch.sts.test" not in rx.log(0)


def test_enforce_self_signed_mx_is_deferred(pair):
    tx, rx = pair
    qid, marker = send(tx, "selfsigned.sts.test")
    line = deferred_line(tx, qid)
    assert line, tx.log_tail()
    assert "4.7.5 the server's certificate does not verify for mx.selfsigned.sts.test" \
        in line.group(0)
    assert not maildir_find(rx, "bob", "selfsigned.sts.test", marker)
    # the failure is in the TLS-RPT data
    pol = wait_for(lambda: policy_of(tlsrpt(tx), "selfsigned.sts.test", "sts")[1])
    assert pol and pol["summary"]["total-failure-session-count"] >= 1, tlsrpt(tx)
    assert pol["failure-details"][0]["result-type"] == "validation-failure"


def test_testing_mode_delivers_and_records_the_failure(pair):
    tx, rx = pair
    qid, marker = send(tx, "testing.sts.test")
    assert wait_for(lambda: maildir_find(rx, "bob", "testing.sts.test", marker)), tx.log_tail()
    line = delivered_line(tx, qid)
    assert line and "TLSv1.2 unverified" in line.group(0), tx.log_tail()
    rep, pol = wait_for(lambda: policy_of(tlsrpt(tx), "testing.sts.test", "sts")[1] and
                        policy_of(tlsrpt(tx), "testing.sts.test", "sts"))
    assert pol, tlsrpt(tx)
    assert pol["summary"]["total-failure-session-count"] == 1
    assert pol["summary"]["total-successful-session-count"] == 0
    fd = pol["failure-details"][0]
    assert fd["result-type"] == "validation-failure"
    assert fd["receiving-mx-hostname"] == "mx.testing.sts.test"
    assert fd["receiving-ip"] == "127.0.0.1"
    assert fd["failed-session-count"] == 1
    assert "mode: testing" in pol["policy"]["policy-string"]
    assert rep["x-tern-rua"] == "mailto:tlsrpt@testing.sts.test"
    assert rep["date-range"]["start-datetime"].endswith("T00:00:00Z")


def test_testing_mode_with_a_valid_certificate_is_a_success(pair):
    """The certificate is judged under the MTA-STS CA set (the test CA),
    not the system bundle: testing mode reports what enforce would do."""
    tx, rx = pair
    qid, marker = send(tx, "testgood.sts.test")
    assert wait_for(lambda: maildir_find(rx, "bob", "testgood.sts.test", marker)), tx.log_tail()
    line = delivered_line(tx, qid)
    assert line and "TLSv1.2 verified" in line.group(0), tx.log_tail()
    pol = wait_for(lambda: policy_of(tlsrpt(tx), "testgood.sts.test", "sts")[1])
    assert pol, tlsrpt(tx)
    assert pol["summary"] == {"total-successful-session-count": 1,
                              "total-failure-session-count": 0}
    assert "failure-details" not in pol


def test_no_policy_is_opportunistic(pair):
    tx, rx = pair
    qid, marker = send(tx, "nopolicy.sts.test")
    assert wait_for(lambda: maildir_find(rx, "bob", "nopolicy.sts.test", marker)), tx.log_tail()
    pol = wait_for(lambda: policy_of(tlsrpt(tx), "nopolicy.sts.test", "no-policy-found")[1])
    assert pol and pol["summary"]["total-successful-session-count"] == 1, tlsrpt(tx)


@pytest.mark.timeout(90 * SLOW)
def test_policy_cached_across_restart(pair, web):
    tx, rx = pair
    qid, marker = send(tx, "nomatch.sts.test")
    assert deferred_line(tx, qid), tx.log_tail()
    assert "event=policy_fetched domain=nomatch.sts.test" in tx.log(0)
    cache = tx.state_dir / "mta-sts" / "nomatch.sts.test"
    assert wait_for(lambda: cache.exists()), tx.log_tail()
    assert "mx: *.elsewhere.sts.test" in cache.read_text()
    # One session without a policy before the restart (TLS-RPT counts it).
    qid0, marker0 = send(tx, "nopolicy.sts.test")
    assert wait_for(lambda: maildir_find(rx, "bob", "nopolicy.sts.test", marker0))
    assert wait_for(lambda: (policy_of(tlsrpt(tx), "nopolicy.sts.test", "no-policy-found")[1]
                             or {}).get("summary", {}).get("total-successful-session-count") == 1)
    tx.stop()
    web.stop()
    # An expired cache entry and a damaged one are not used.
    (tx.state_dir / "mta-sts" / "expired.sts.test").write_text(
        "tern-mta-sts-cache 1\nid 1\nfetched 1000\n\n" + POLICIES["good.sts.test"])
    (tx.state_dir / "mta-sts" / "damaged.sts.test").write_text("tern-mta-sts-cache 1\nid x\n")
    tx.start()
    assert "event=cache_loaded domain=nomatch.sts.test id=20261122a mode=enforce" in tx.log()
    assert "domain=expired.sts.test" not in tx.log()
    assert not (tx.state_dir / "mta-sts" / "expired.sts.test").exists()
    assert 'event=cache_file_bad path="' in tx.log() and "damaged.sts.test" in tx.log()
    # TLS-RPT counting goes on from today's file.
    qid1, marker1 = send(tx, "nopolicy.sts.test")
    assert wait_for(lambda: maildir_find(rx, "bob", "nopolicy.sts.test", marker1))
    assert wait_for(lambda: (policy_of(tlsrpt(tx), "nopolicy.sts.test", "no-policy-found")[1]
                             or {}).get("summary", {}).get("total-successful-session-count") == 2), \
        tlsrpt(tx)
    # Without the cache the web server's absence would mean no policy, and
    # the message would go to the MX: it is still held to the policy.
    qid2, marker2 = send(tx, "nomatch.sts.test")
    line = wait_for(lambda: re.search(rf"event=deferred qid={qid2} .*", tx.log()))
    assert line and "does not match the MTA-STS policy" in line.group(0), tx.log_tail()
    assert "policy_fetch" not in tx.log()
    assert not maildir_find(rx, "bob", "nomatch.sts.test", marker2)


@pytest.mark.parametrize("domain,result,why", [
    ("redirect", "sts-policy-fetch-error", "HTTP status 301"),
    ("webpki", "sts-webpki-invalid", "TLS with mta-sts.webpki.sts.test failed"),
    ("big", "sts-policy-fetch-error", "over the 65536 byte limit"),
    ("html", "sts-policy-fetch-error", "Content-Type is not text/plain"),
])
def test_policy_fetch_failure_delivers_without_policy(pair, web, domain, result, why):
    """A policy that cannot be fetched (a redirect, a web certificate not
    valid for mta-sts.<domain>) is no policy: delivery goes on as without
    one, and the failure is in the TLS-RPT data."""
    tx, rx = pair
    d = f"{domain}.sts.test"
    qid, marker = send(tx, d)
    assert wait_for(lambda: maildir_find(rx, "bob", d, marker)), tx.log_tail()
    assert re.search(rf"event=policy_fetch_failed domain={d} ", tx.log(0))
    pol = wait_for(lambda: policy_of(tlsrpt(tx), d, "sts")[1])
    assert pol, tlsrpt(tx)
    fd = pol["failure-details"][0]
    assert fd["result-type"] == result, fd
    assert fd["receiving-mx-hostname"] == f"mta-sts.{d}"
    assert why in fd["additional-information"], fd
    if domain == "redirect":
        assert (d, "/.well-known/mta-sts.txt") in web.fetches
        assert ("good.sts.test", "/.well-known/mta-sts.txt") not in web.fetches
    # the delivery itself counted as a session without a policy
    nop = wait_for(lambda: policy_of(tlsrpt(tx), d, "no-policy-found")[1])
    assert nop and nop["summary"]["total-successful-session-count"] == 1, tlsrpt(tx)
