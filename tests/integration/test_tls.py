"""TLS: STARTTLS and implicit TLS, the Received header naming the protocol
and cipher, the STARTTLS command-injection class (CVE-2011-0411), SNI
certificate selection, cipher suite settings, client certificates, and
certificates swapped by SIGHUP."""

import re
import ssl

import pytest

from conftest import HOSTNAME, Client, cert_der, client_context, make_message, send_mail
from helpers import cipher_matches, contains_message, received_headers


def keywords(reply):
    return {ln.split()[0].upper() for ln in reply.lines[1:] if ln.strip()}


def test_starttls_then_send(tern, certs):
    c = tern.connect()
    assert "STARTTLS" in keywords(c.ehlo())
    ctx = client_context(cafile=certs.path("main.crt"), verify=True)
    c.starttls(context=ctx, server_hostname=HOSTNAME)
    assert c.sock.version() == "TLSv1.2"
    cipher = c.sock.cipher()[0]
    r = c.ehlo()
    kw = keywords(r)
    assert "STARTTLS" not in kw, r
    assert {"PIPELINING", "SIZE", "CHUNKING"} <= kw
    msg = make_message(subject="over tls")
    r = send_mail(c, ehlo=False, message=msg)
    assert r.code == 250 and r.qid, r
    show = tern.spool_show(r.qid)
    assert contains_message(show, msg)
    ours = received_headers(show)[0]
    assert "TLSv1.2" in ours, ours
    assert cipher_matches(cipher, ours), (cipher, ours)
    assert re.search(r"\bwith ESMTPS\b", ours), ours


def test_state_reset_after_starttls(tern):
    c = tern.connect()
    c.ehlo()
    c.starttls()
    # RFC 3207: the server forgets everything it learnt before TLS; a
    # second STARTTLS is refused.
    r = c.cmd("STARTTLS")
    assert r.code // 100 == 5, r
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.org>").code == 250


def test_starttls_with_argument_refused(tern):
    c = tern.connect()
    c.ehlo()
    r = c.cmd("STARTTLS now")
    assert r.code == 501, r


def test_starttls_injection_discarded(tern):
    """Commands pipelined after STARTTLS before the handshake must not be
    executed, neither in plaintext nor inside TLS."""
    c = tern.connect()
    c.ehlo()
    c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@example.org>\r\n")
    r = c.reply()
    assert r.code == 220, r
    assert c.buf == b"", f"plaintext after 220: {c.buf!r}"
    c._wrap(None, HOSTNAME)
    # the first reply inside TLS must answer our HELP, not the injected RSET
    r = c.cmd("HELP")
    assert r.code == 214, f"an injected command was answered inside TLS: {r}"
    c.ehlo()
    # MAIL from before the handshake was not executed either
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 503


def test_starttls_injection_same_segment_as_handshake_wait(tern):
    """Injected bytes that arrive after the 220, in their own packet but
    still before the ClientHello, are discarded too (or the connection is
    dropped): they are never executed."""
    c = tern.connect()
    c.ehlo()
    c.send(b"STARTTLS\r\n")
    assert c.reply().code == 220
    c.send(b"NOOP\r\n")
    try:
        c._wrap(None, HOSTNAME)
    except (ssl.SSLError, ConnectionResetError, OSError):
        return              # refusing the handshake is safe too
    r = c.cmd("HELP")
    assert r.code == 214, r


def test_implicit_tls(tern_factory, certs):
    # submission takes mail from authenticated clients or relay_networks
    tern = tern_factory({"smtp": {"relay_networks": ["127.0.0.0/8"]}})
    ctx = client_context(cafile=certs.path("main.crt"), verify=True)
    c = tern.client("submissions", context=ctx, server_hostname=HOSTNAME)
    assert c.tls and c.sock.version() == "TLSv1.2"
    r = c.reply()
    assert r.code == 220, r
    kw = keywords(c.ehlo())
    assert "STARTTLS" not in kw
    msg = make_message(subject="implicit")
    r = send_mail(c, ehlo=False, message=msg)
    assert r.code == 250, r
    ours = received_headers(tern.spool_show(r.qid))[0]
    assert "TLSv1.2" in ours and cipher_matches(c.sock.cipher()[0], ours), ours


def test_implicit_tls_plaintext_client(tern):
    """A plaintext client on the implicit TLS port gets no SMTP banner."""
    c = Client(tern.port("submissions"))
    c.send(b"EHLO plain.test\r\n")
    data = c.quiet(2)
    assert not data.startswith(b"220"), data
    c.close()


def test_submission_starttls(tern):
    c = tern.connect("submission")
    assert "STARTTLS" in keywords(c.ehlo())
    c.starttls()
    c.ehlo()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_2_minimum(tern):
    ctx = client_context(maximum_version=ssl.TLSVersion.TLSv1_1,
                         minimum_version=ssl.TLSVersion.TLSv1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")   # let this client offer TLS 1.0/1.1
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        c = tern.client("submissions", context=ctx)
        c.reply()


@pytest.fixture
def two_certs(tern_factory, certs):
    return tern_factory({"tls": {"certificates": {
        "main": {"cert": certs.path("main.crt"), "key": certs.path("main.key"),
                 "default": True},
        "other": {"cert": certs.path("other.crt"), "key": certs.path("other.key")},
    }}})


@pytest.mark.parametrize("sni,expect", [
    ("other.test", "other"),          # exact, from the certificate's SANs
    ("mx.other.test", "other"),       # parent domain
    (HOSTNAME, "main"),
    ("unknown.example.net", "main"),  # the default
    (None, "main"),                   # no SNI: the default
])
def test_sni(two_certs, certs, sni, expect):
    c = two_certs.client("submissions", server_hostname=sni)
    assert c.sock.getpeercert(binary_form=True) == cert_der(certs.path(f"{expect}.crt"))
    assert c.reply().code == 220


def test_sni_explicit_subjects(tern_factory, certs):
    t = tern_factory({"tls": {"certificates": {
        "main": {"cert": certs.path("main.crt"), "key": certs.path("main.key"),
                 "default": True},
        "other": {"cert": certs.path("other.crt"), "key": certs.path("other.key"),
                  "subjects": ["mail.second.test"]},
    }}})
    c = t.client("submissions", server_hostname="mail.second.test")
    assert c.sock.getpeercert(binary_form=True) == cert_der(certs.path("other.crt"))


def test_certificate_reload(tern, certs):
    c0 = tern.client("submissions")
    assert c0.sock.getpeercert(binary_form=True) == cert_der(certs.path("main.crt"))
    assert c0.reply().code == 220
    tern.reload({"tls": {"certificates": {
        "main": None,
        "other": {"cert": certs.path("other.crt"), "key": certs.path("other.key"),
                  "default": True}}}})
    c1 = tern.client("submissions")
    assert c1.sock.getpeercert(binary_form=True) == cert_der(certs.path("other.crt"))
    assert c1.reply().code == 220
    # the session opened before the reload goes on
    assert c0.cmd("NOOP").code == 250


def test_disable_cipher_suite(tern_factory):
    ctx = client_context()
    ctx.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    t = tern_factory()
    c = t.client("submissions", context=ctx)
    assert c.sock.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
    c.close()
    t.stop()
    t2 = tern_factory({"tls": {"protocols": {
        "disable_cipher_suites": ["TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384"]}}})
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        c = t2.client("submissions", context=ctx)
        c.reply()
    c = t2.client("submissions")                       # other suites still work
    assert c.sock.cipher()[0] != "ECDHE-RSA-AES256-GCM-SHA384"


def test_ignore_client_order(tern_factory):
    # the client prefers CBC; the server's order (GCM first in mbedTLS) wins
    ctx = client_context()
    ctx.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    t = tern_factory({"tls": {"protocols": {"ignore_client_order": True}}})
    c = t.client("submissions", context=ctx)
    assert "GCM" in c.sock.cipher()[0], c.sock.cipher()


def mtls_config(certs, t, mode):
    t.config["listeners"][2]["tls"] = {"mode": "implicit", "client_ca": certs.path("ca.crt"),
                                       "client_cert": mode}
    t.write_config()
    t.start()


def test_client_cert_required(tern_factory, certs):
    t = tern_factory(start=False)
    mtls_config(certs, t, "required")
    with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError, OSError)):
        c = t.client("submissions")
        c.reply()
    ctx = client_context()
    ctx.load_cert_chain(certs.path("client.crt"), certs.path("client.key"))
    c = t.client("submissions", context=ctx)
    assert c.reply().code == 220
    c.ehlo()


def test_client_cert_optional(tern_factory, certs):
    t = tern_factory(start=False)
    mtls_config(certs, t, "optional")
    c = t.client("submissions")
    assert c.reply().code == 220
    ctx = client_context()
    ctx.load_cert_chain(certs.path("client.crt"), certs.path("client.key"))
    c = t.client("submissions", context=ctx)
    assert c.reply().code == 220


def peer_names(der):
    """Subject CN and DNS SANs of a DER certificate, through openssl."""
    import subprocess
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-ext",
                        "subjectAltName"], input=der, capture_output=True, timeout=30)
    return p.stdout.decode(errors="replace")


def test_self_signed_fallback_without_certificates(tern_factory):
    t = tern_factory({"tls": None})
    c = t.connect()
    assert "STARTTLS" in keywords(c.ehlo())
    c.starttls()
    names = peer_names(c.sock.getpeercert(binary_form=True))
    assert HOSTNAME in names, names
    c.ehlo()
    assert re.search(r"\blevel=warn\b.*(self-signed|self_signed|selfsigned)", t.log(), re.I), \
        "no warning about the generated certificate:\n" + t.log()


def test_no_match_and_no_default_gets_self_signed(tern_factory, certs):
    # two certificates (one alone would serve every name), neither the default
    t = tern_factory({"tls": {"certificates": {
        "main": None,
        "other": {"cert": certs.path("other.crt"), "key": certs.path("other.key")},
        "cnonly": {"cert": certs.path("cnonly.crt"), "key": certs.path("cnonly.key")}}}})
    c = t.client("submissions", server_hostname="other.test")
    assert c.sock.getpeercert(binary_form=True) == cert_der(certs.path("other.crt"))
    c.close()
    c = t.client("submissions", server_hostname="nomatch.example.net")
    der = c.sock.getpeercert(binary_form=True)
    assert der not in (cert_der(certs.path("other.crt")), cert_der(certs.path("cnonly.crt")))
    assert HOSTNAME in peer_names(der)
    assert c.reply().code == 220


def test_subjects_from_cn_when_no_san(tern_factory, certs):
    t = tern_factory({"tls": {"certificates": {
        "cnonly": {"cert": certs.path("cnonly.crt"), "key": certs.path("cnonly.key")}}}})
    c = t.client("submissions", server_hostname="cnonly.test")
    assert c.sock.getpeercert(binary_form=True) == cert_der(certs.path("cnonly.crt"))
