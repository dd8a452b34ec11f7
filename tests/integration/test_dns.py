"""The resolver (lib/dns.c) against a real DNS server on loopback.

tests/dns/server.py serves tests/dns/zone.txt on 127.0.0.1 (a free port);
build/tests/dns/dns_probe runs the resolver on a libuv loop pointed at it
and prints each result. No ternd here: nothing in it resolves yet."""

import shutil
import subprocess
import sys

import pytest

from conftest import BUILD, ROOT, SLOW

PROBE = BUILD / "tests" / "dns" / "dns_probe"
SERVER = ROOT / "tests" / "dns" / "server.py"
ZONE = ROOT / "tests" / "dns" / "zone.txt"
SIGNED_ZONE = ROOT / "tests" / "dns" / "signed.zone"
# libunbound answers these itself by default (RFC 6761, RFC 6303).
UNBLOCK = ["-u", "test", "-u", "2.0.192.in-addr.arpa", "-u", "8.b.d.0.1.0.0.2.ip6.arpa"]

pytestmark = pytest.mark.skipif(not PROBE.exists(), reason="dns_probe not built")


def start_server(tmp_path, zones):
    log = tmp_path / "queries.log"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), *map(str, zones), "--lifetime", str(60 * SLOW),
         "--silent", "silent.example.test", "--servfail", "broken.example.test",
         "--log", str(log)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
    except ValueError:
        stop_server(proc)
        raise
    return proc, port, log


def stop_server(proc):
    proc.stdin.close()   # the server stops when its stdin closes
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def dns_server(tmp_path):
    proc, port, log = start_server(tmp_path, [ZONE])
    try:
        yield port, log
    finally:
        stop_server(proc)


@pytest.fixture
def signed_server(tmp_path):
    """zone.txt and signed.zone, the latter signed now with a fresh key and
    one record altered after signing. Yields (port, trust anchor file)."""
    if not (shutil.which("ldns-keygen") and shutil.which("ldns-signzone")):
        pytest.skip("ldnsutils (ldns-keygen, ldns-signzone) not installed")
    work = tmp_path / "signed"
    work.mkdir()
    zone = work / "signed.zone"
    shutil.copy(SIGNED_ZONE, zone)
    key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "signed.example.test"],
                         cwd=work, capture_output=True, text=True, check=True,
                         timeout=30).stdout.strip()
    subprocess.run(["ldns-signzone", "-o", "signed.example.test.", str(zone), key],
                   cwd=work, capture_output=True, text=True, check=True, timeout=30)
    signed = work / "signed.zone.signed"
    text = signed.read_text()
    assert '"original"' in text
    signed.write_text(text.replace('"original"', '"forged"'))
    proc, port, _ = start_server(tmp_path, [ZONE, signed])
    try:
        yield port, work / (key + ".key")
    finally:
        stop_server(proc)


def probe(port, *args, timeout_ms=3000, expect_rc=0, unblock=True):
    cmd = [str(PROBE), "-s", "127.0.0.1@%d" % port, "-t", str(timeout_ms)]
    if unblock:
        cmd += UNBLOCK
    cmd += list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60 * SLOW)
    assert p.returncode == expect_rc, (p.stdout, p.stderr)
    assert "AddressSanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p.stdout, p.stderr


def blocks(out):
    """{(round, TYPE, name): (header line, [record lines])} in print order."""
    res, cur = {}, None
    for line in out.splitlines():
        if line.startswith("Q"):
            rnd, typ, name = line.split()[:3]
            cur = (int(rnd[1:]), typ, name)
            res[cur] = (line, [])
        elif cur is not None:
            res[cur][1].append(line.strip())
    return res


def test_record_types(dns_server):
    port, _ = dns_server
    out, _ = probe(port, "MX:example.test", "A:mx1a.example.test", "AAAA:mx2.example.test",
                   "TXT:example.test", "TXT:multi.example.test",
                   "TLSA:_25._tcp.mx1a.example.test", "PTR:192.0.2.10", "PTR:2001:db8::20",
                   "A:alias.example.test")
    b = blocks(out)
    head, rrs = b[(1, "MX", "example.test")]
    assert "status=answer rcode=NOERROR security=insecure ttl=300 n=4" in head
    assert sorted(rrs) == sorted(["MX 20 mx2.example.test", "MX 10 mx1a.example.test",
                                  "MX 10 mx1b.example.test", "MX 30 backup.example.net"])
    assert b[(1, "A", "mx1a.example.test")][1] == ["A 192.0.2.10"]
    assert b[(1, "AAAA", "mx2.example.test")][1] == ["AAAA 2001:db8::20"]
    # The character-strings come separately, unjoined (RFC 7208 3.3 is the caller's).
    assert b[(1, "TXT", "example.test")][1] == ['TXT "v=spf1 ip4:192.0.2.0/24 " "-all"']
    assert b[(1, "TXT", "multi.example.test")][1] == ['TXT "first" "" "third part"']
    assert b[(1, "TLSA", "_25._tcp.mx1a.example.test")][1] == [
        "TLSA 3 1 1 " + "0123456789abcdef" * 4]
    assert b[(1, "PTR", "10.2.0.192.in-addr.arpa")][1] == ["PTR mx1a.example.test"]
    ptr6 = "0.2.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.ip6.arpa"
    assert b[(1, "PTR", ptr6)][1] == ["PTR mx2.example.test"]
    head, rrs = b[(1, "A", "alias.example.test")]
    assert "canon=mx2.example.test." in head and rrs == ["A 192.0.2.20"]


def test_nxdomain_nodata_servfail(dns_server):
    port, _ = dns_server
    out, _ = probe(port, "A:nope.example.test", "MX:implicit.example.test",
                   "A:broken.example.test", "TLSA:_25._tcp.mx2.example.test")
    b = blocks(out)
    assert "status=answer rcode=NXDOMAIN" in b[(1, "A", "nope.example.test")][0]
    head, rrs = b[(1, "MX", "implicit.example.test")]
    assert "status=answer rcode=NOERROR" in head and "n=0" in head and rrs == []
    assert "rcode=SERVFAIL" in b[(1, "A", "broken.example.test")][0]
    assert "rcode=NXDOMAIN" in b[(1, "TLSA", "_25._tcp.mx2.example.test")][0]


def test_mx_plan(dns_server):
    port, _ = dns_server
    out, _ = probe(port, "-m", "MX:example.test", "MX:nullmx.example.test",
                   "MX:implicit.example.test", "MX:nope.example.test")
    b = blocks(out)
    plan = [l for l in b[(1, "MX", "example.test")][1] if l.startswith("plan")][0]
    hosts = plan.split(":", 1)[1].split()
    assert sorted(hosts[:2]) == ["mx1a.example.test/10", "mx1b.example.test/10"]
    assert hosts[2:] == ["mx2.example.test/20", "backup.example.net/30"]
    assert "plan null-mx" in b[(1, "MX", "nullmx.example.test")][1][-1]
    assert b[(1, "MX", "implicit.example.test")][1][-1] == \
        "plan hosts implicit=1 secure=0: implicit.example.test/0"
    assert "plan no-domain" in b[(1, "MX", "nope.example.test")][1][-1]
    # Our own name among the MXs: it and everything after it are dropped.
    out, _ = probe(port, "-m", "-S", "MX2.example.test", "MX:example.test")
    plan = [l for l in blocks(out)[(1, "MX", "example.test")][1] if l.startswith("plan")][0]
    assert sorted(plan.split(":", 1)[1].split()) == ["mx1a.example.test/10", "mx1b.example.test/10"]
    out, _ = probe(port, "-m", "-S", "mx1b.example.test", "MX:example.test")
    assert "plan loop" in out


def test_timeout_is_ours(dns_server):
    """A server that never answers: the query ends at its timeout, while the
    others in flight at the same time are answered normally."""
    port, _ = dns_server
    ms = 800 * SLOW
    out, _ = probe(port, "A:silent.example.test", "A:mx1a.example.test", timeout_ms=ms)
    b = blocks(out)
    head = b[(1, "A", "silent.example.test")][0]
    assert "status=timeout" in head and 'error="no answer within %d ms"' % ms in head
    assert b[(1, "A", "mx1a.example.test")][1] == ["A 192.0.2.10"]


def test_many_concurrent_queries(dns_server):
    """48 queries in flight at once on one loop and one resolver."""
    port, _ = dns_server
    names = ["A:mx1a.example.test", "A:mx1b.example.test", "A:mx2.example.test",
             "AAAA:mx2.example.test", "TXT:example.test", "MX:example.test",
             "A:implicit.example.test", "AAAA:implicit.example.test", "A:nope.example.test",
             "TXT:multi.example.test", "PTR:192.0.2.10", "A:ns.example.test"] * 4
    out, _ = probe(port, *names)
    b = blocks(out)
    assert all("status=answer" in h for h, _ in b.values()), out
    assert b[(1, "A", "mx1b.example.test")][1] == ["A 192.0.2.11"]


def test_cache_answers_second_round(dns_server):
    port, log = dns_server
    out, _ = probe(port, "-r", "5", "MX:example.test", "A:mx1a.example.test")
    b = blocks(out)
    assert b[(1, "MX", "example.test")][1] == b[(5, "MX", "example.test")][1]
    assert b[(5, "A", "mx1a.example.test")][1] == ["A 192.0.2.10"]
    # Five rounds, one upstream query each (two if a slow reply made
    # libunbound resend): the later rounds came from the cache.
    queries = log.read_text().splitlines()
    assert 1 <= queries.count("MX example.test.") <= 2, queries
    assert 1 <= queries.count("A mx1a.example.test.") <= 2, queries


def test_cancel_and_close(dns_server):
    port, _ = dns_server
    # -x cancels every second query at once: its callback must never run.
    out, _ = probe(port, "-x", "A:mx1a.example.test", "A:mx1b.example.test",
                   "A:mx2.example.test", "A:silent.example.test")
    b = blocks(out)
    assert b[(1, "A", "mx1b.example.test")][0].endswith("cancelled-by-caller")
    assert b[(1, "A", "silent.example.test")][0].endswith("cancelled-by-caller")
    assert b[(1, "A", "mx2.example.test")][1] == ["A 192.0.2.20"]
    # Closing the resolver with a query pending answers it CANCELLED.
    out, _ = probe(port, "-k", "300", "A:silent.example.test", timeout_ms=5000)
    assert "status=cancelled" in out


def test_unbound_defaults_block_test_names(dns_server):
    """Without unblocking, libunbound answers test. itself (RFC 6761):
    the server is not asked. This is why dns.unblock_zones exists."""
    port, log = dns_server
    out, _ = probe(port, "A:mx1a.example.test", unblock=False)
    assert "rcode=NXDOMAIN" in out
    assert "mx1a" not in log.read_text()


def test_dnssec_trust_anchor_file(dns_server, tmp_path):
    port, _ = dns_server
    # Unsigned zone, validator on, no anchor: insecure (already above).
    # An anchor for example.test makes the same unsigned answers bogus:
    # proof that the file was read and used.
    ta = tmp_path / "anchor.key"
    ta.write_text("example.test. 3600 IN DS 12345 8 2 "
                  "49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE4DA1E1AC7D9E9B6E2A1F3D2C\n")
    out, _ = probe(port, "-a", str(ta), "-m", "MX:example.test", "A:mx1a.example.test")
    b = blocks(out)
    head = b[(1, "MX", "example.test")][0]
    assert "security=bogus" in head and "why_bogus=" in head
    assert "plan tempfail" in b[(1, "MX", "example.test")][1][-1]
    assert "security=bogus" in b[(1, "A", "mx1a.example.test")][0]
    # The validator off: the same anchor file is not used.
    out, _ = probe(port, "-n", "-a", str(ta), "MX:example.test")
    assert "security=insecure" in out
    # An anchor file that does not parse, or does not exist, stops the start.
    bad = tmp_path / "bad.key"
    bad.write_text("this is not a trust anchor\n")
    _, err = probe(port, "-a", str(bad), "A:mx1a.example.test", expect_rc=2)
    assert "trust anchor" in err
    _, err = probe(port, "-a", str(tmp_path / "missing.key"), "A:mx1a.example.test", expect_rc=2)
    assert "trust anchor" in err or "missing.key" in err


def test_bad_names_are_refused_at_once(dns_server):
    port, log = dns_server
    long_label = "x" * 64 + ".example.test"
    long_name = ".".join(["abcdefghi"] * 26)   # 259 characters
    out, _ = probe(port, "A:a..example.test", "A:" + long_label, "A:" + long_name,
                   "A:mx1a.example.test")
    b = blocks(out)
    for name in ("a..example.test", long_label, long_name):
        assert b[(1, "A", name)][0].endswith('refused="invalid argument"'), out
    assert b[(1, "A", "mx1a.example.test")][1] == ["A 192.0.2.10"]
    assert "a..example" not in log.read_text()


def test_bad_forwarder_is_a_startup_error(tmp_path):
    p = subprocess.run([str(PROBE), "-s", "not-an-address", "A:example.test"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "forwarder" in p.stderr
    # The system's resolvers: a resolv.conf that cannot be read.
    missing = tmp_path / "resolv.conf"
    p = subprocess.run([str(PROBE), "-R", str(missing), "A:example.test"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and str(missing) in p.stderr


def test_dnssec_signed_zone(signed_server):
    """A zone really signed: its answers validate (secure), its proven
    NODATA too, a record altered after signing is bogus and comes without
    its records, and the unsigned zone next to it stays insecure."""
    port, anchor = signed_server
    out, _ = probe(port, "-a", str(anchor), "-m", "MX:signed.example.test",
                   "A:mx.signed.example.test", "TLSA:_25._tcp.mx.signed.example.test",
                   "TXT:signed.example.test", "AAAA:mx.signed.example.test",
                   "TXT:tampered.signed.example.test", "MX:example.test")
    b = blocks(out)
    head, rrs = b[(1, "MX", "signed.example.test")]
    assert "rcode=NOERROR security=secure" in head, out
    assert rrs == ["MX 10 mx.signed.example.test",
                   "plan hosts implicit=0 secure=1: mx.signed.example.test/10"]
    assert "security=secure" in b[(1, "A", "mx.signed.example.test")][0]
    assert b[(1, "A", "mx.signed.example.test")][1] == ["A 192.0.2.40"]
    head, rrs = b[(1, "TLSA", "_25._tcp.mx.signed.example.test")]
    assert "security=secure" in head and rrs == ["TLSA 3 1 1 " + "0123456789abcdef" * 4]
    assert "security=secure" in b[(1, "TXT", "signed.example.test")][0]
    head, rrs = b[(1, "AAAA", "mx.signed.example.test")]
    assert "rcode=NOERROR security=secure" in head and "n=0" in head and rrs == []
    head, rrs = b[(1, "TXT", "tampered.signed.example.test")]
    assert "security=bogus" in head and "n=0" in head and rrs == [], out
    assert "signature" in head   # libunbound's why_bogus names the failure
    assert "security=insecure" in b[(1, "MX", "example.test")][0]
    # Without the anchor the same signed answers are only insecure.
    out, _ = probe(port, "TXT:tampered.signed.example.test", "MX:signed.example.test")
    assert out.count("security=insecure") == 2, out
