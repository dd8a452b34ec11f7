"""SMTP AUTH (RFC 4954) on submission listeners, driven by real clients:
smtplib's PLAIN and LOGIN, swaks, and a SCRAM-SHA-256 client written here
from RFC 5802. Covers what is advertised where (never plaintext mechanisms
before TLS), relaying after AUTH, failures that say nothing about the user,
the limiter's delay, aborts, and the Received header's ESMTPSA."""

import base64
import hashlib
import hmac
import os
import smtplib
import ssl
import subprocess
import time

import pytest

from conftest import ROOT, TERNCTL, Quoted, free_ports, make_message, client_context


def ctl(t, *args, stdin=None):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], input=stdin,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


@pytest.fixture
def authed(tern_factory):
    t = tern_factory({"auth": {"failure_delay": "200ms", "max_delay": "1s"},
                      "auth_internal": {"scram": True}}, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test", "--password-stdin", stdin=b"correct horse\n")
    t.start()
    return t


def smtplib_tls(t, name="submission"):
    s = smtplib.SMTP("127.0.0.1", t.port(name), timeout=20)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo()
    return s


def test_no_auth_before_tls(authed):
    c = authed.connect("submission")
    r = c.ehlo()
    assert not any(ln.upper().startswith("AUTH") for ln in r.lines), r
    r = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0correct horse").decode())
    assert r.code == 538 and r.enhanced == "5.7.11", r
    c.starttls(client_context())
    r = c.ehlo()
    auth = [ln for ln in r.lines if ln.upper().startswith("AUTH ")]
    assert auth and "PLAIN" in auth[0] and "LOGIN" in auth[0] and "SCRAM-SHA-256" in auth[0], r


def test_mx_listener_offers_no_auth(authed):
    c = authed.connect("mx")
    c.starttls(client_context())
    r = c.ehlo()
    assert not any(ln.upper().startswith("AUTH") for ln in r.lines), r


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_smtplib_login_then_relay(authed, mech):
    s = smtplib_tls(authed)
    s.user, s.password = "alice@example.test", "correct horse"
    code, _ = s.auth(mech, getattr(s, "auth_" + mech.lower()))
    assert code == 235
    # Authenticated: relaying to a foreign domain is allowed on submission.
    refused = s.sendmail("alice@example.test", ["friend@elsewhere.example"],
                         make_message(subject=f"via {mech}"))
    assert refused == {}
    s.quit()
    log = authed.log()
    assert f"event=auth " in log and f"mech={mech}" in log and "account=alice@example.test" in log
    qid = [ln for ln in log.splitlines() if "event=queued" in ln][-1].split("qid=")[1].split()[0]
    show = authed.spool_show(qid).decode("utf-8", "replace")
    assert "with ESMTPSA" in show, show
    assert "auth_user: alice@example.test" in show, show


def test_wrong_password_and_unknown_user_look_the_same(authed):
    replies = []
    for user, pw in (("alice@example.test", "Wr0ng-Pa55"), ("nobody@example.test", "Wr0ng-Pa55")):
        s = smtplib_tls(authed)
        t0 = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(user, pw)
        replies.append((e.value.smtp_code, e.value.smtp_error))
        # The limiter holds a failure's answer back.
        assert time.monotonic() - t0 >= 0.15
        s.close()
    assert replies[0] == replies[1] == (535, b"5.7.8 Authentication credentials invalid"), replies
    assert "Wr0ng-Pa55" not in authed.log()             # passwords are never logged
    assert base64.b64encode(b"Wr0ng-Pa55").decode() not in authed.log()


def test_mail_needs_auth_on_submission(authed):
    c = authed.connect("submission")
    c.starttls(client_context())
    c.ehlo()
    r = c.cmd("MAIL FROM:<alice@example.test>")
    assert r.code == 530 and r.enhanced == "5.7.0", r


def test_abort_and_bad_base64(authed):
    c = authed.connect("submission")
    c.starttls(client_context())
    c.ehlo()
    r = c.cmd("AUTH LOGIN")
    assert r.code == 334, r
    r = c.cmd("*")
    assert r.code == 501, r
    r = c.cmd("AUTH PLAIN !!!notbase64")
    assert r.code == 501, r
    r = c.cmd("AUTH CRAM-MD5")
    assert r.code == 504, r                       # not offered: never served
    r = c.cmd("AUTH PLAIN")
    assert r.code == 334 and r.text.strip() == "", r
    r = c.cmd(base64.b64encode(b"\0alice@example.test\0correct horse").decode())
    assert r.code == 235, r
    r = c.cmd("AUTH PLAIN")
    assert r.code == 503, r                       # already authenticated


def test_long_response_line(authed):
    """Responses may exceed the 512-octet command limit (RFC 4954: 12288)."""
    c = authed.connect("submission")
    c.starttls(client_context())
    c.ehlo()
    assert c.cmd("AUTH PLAIN").code == 334
    blob = base64.b64encode(b"\0alice@example.test\0" + b"x" * 3000).decode()
    r = c.cmd(blob)
    assert r.code == 535, r
    assert c.cmd("NOOP").code == 250


def _scram(c, user, password, tamper=False, plus=False, gs2="n,,", cb=b""):
    """plus: SCRAM-SHA-256-PLUS with tls-unique (cb: the channel binding
    data to send, normally the connection's); gs2: the header otherwise
    ("y,," says the client could bind but thinks the server cannot)."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    if plus:
        gs2 = "p=tls-unique,,"
    mech = "SCRAM-SHA-256-PLUS" if plus else "SCRAM-SHA-256"
    r = c.cmd(f"AUTH {mech} " + base64.b64encode((gs2 + first_bare).encode()).decode())
    if r.code != 334:
        return r, None
    assert r.code == 334, r
    server_first = base64.b64decode(r.text.strip()).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(nonce)
    salt = base64.b64decode(attrs["s"])
    it = int(attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, it)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    final_bare = "c=" + base64.b64encode(gs2.encode() + cb).decode() + ",r=" + attrs["r"]
    auth_msg = ",".join([first_bare, server_first, final_bare]).encode()
    sig = hmac.new(stored, auth_msg, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    if tamper:
        proof = bytes([proof[0] ^ 1]) + proof[1:]
    r = c.cmd(base64.b64encode(
        (final_bare + ",p=" + base64.b64encode(proof).decode()).encode()).decode())
    if r.code != 334:
        return r, None
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expect = base64.b64encode(hmac.new(server_key, auth_msg, "sha256").digest()).decode()
    v = base64.b64decode(r.text.strip()).decode()
    r2 = c.cmd("")
    return r2, v == "v=" + expect


def test_scram_sha_256(authed):
    c = authed.connect("submission")
    c.starttls(client_context())
    c.ehlo()
    r, server_ok = _scram(c, "alice@example.test", "correct horse")
    assert r.code == 235, r
    assert server_ok, "the server's signature did not verify"
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250


def test_scram_sha_256_plus_tls_unique(authed):
    """SCRAM-SHA-256-PLUS with tls-unique (RFC 5929; TLS 1.2 with the
    extended master secret): offered after STARTTLS, accepted with the
    connection's binding, refused with another one; a client that could
    bind but says "y" (it did not see -PLUS) is refused as a downgrade."""
    c = authed.connect("submission")
    c.starttls(client_context())
    r = c.ehlo()
    auth = [ln for ln in r.lines if ln.upper().startswith("AUTH ")]
    assert auth and "SCRAM-SHA-256-PLUS" in auth[0].split(), r
    cb = c.sock.get_channel_binding("tls-unique")
    assert cb and len(cb) == 12
    r, server_ok = _scram(c, "alice@example.test", "correct horse", plus=True, cb=cb)
    assert r.code == 235, r
    assert server_ok
    # Another connection's binding (a man in the middle relaying SCRAM).
    c2 = authed.connect("submission")
    c2.starttls(client_context())
    c2.ehlo()
    r, _ = _scram(c2, "alice@example.test", "correct horse", plus=True, cb=cb)
    assert r.code == 535, r
    c3 = authed.connect("submission")
    c3.starttls(client_context())
    c3.ehlo()
    r, _ = _scram(c3, "alice@example.test", "correct horse", gs2="y,,")
    assert r.code == 535, r
    assert "reason=channel_binding_downgrade" in authed.log(0) or \
        "channel_binding_downgrade" in authed.log(0) or \
        "server-does-support-channel-binding" in authed.log(0), authed.log_tail()


def test_scram_plus_over_imap(tern_factory):
    """The same over IMAP AUTHENTICATE (imaplib), after STARTTLS."""
    import imaplib
    t = tern_factory({"auth_internal": {"scram": True}}, start=False)
    t.config["listeners"].append({"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                                  "port": free_ports(1)[0], "tls": "starttls"})
    t.write_config()
    ctl(t, "account", "add", "alice@example.test", "--password-stdin", stdin=b"correct horse\n")
    t.start()
    m = imaplib.IMAP4("127.0.0.1", t.port("imap"), timeout=20)
    m.starttls(ssl_context=client_context())
    assert "AUTH=SCRAM-SHA-256-PLUS" in m.capabilities, m.capabilities
    cb = m.sock.get_channel_binding("tls-unique")
    nonce = base64.b64encode(os.urandom(18)).decode()
    gs2 = "p=tls-unique,,"
    first_bare = f"n=alice@example.test,r={nonce}"
    st = {}

    def step(challenge):
        if not st:
            st["sent"] = True
            return (gs2 + first_bare).encode()
        text = challenge.decode()
        if text.startswith("v="):
            st["v"] = text
            return b""
        attrs = dict(kv.split("=", 1) for kv in text.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", b"correct horse", base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        ck = hmac.new(salted, b"Client Key", "sha256").digest()
        final_bare = "c=" + base64.b64encode(gs2.encode() + cb).decode() + ",r=" + attrs["r"]
        msg = ",".join([first_bare, text, final_bare]).encode()
        sig = hmac.new(hashlib.sha256(ck).digest(), msg, "sha256").digest()
        sk = hmac.new(salted, b"Server Key", "sha256").digest()
        st["expect"] = "v=" + base64.b64encode(hmac.new(sk, msg, "sha256").digest()).decode()
        proof = bytes(a ^ b for a, b in zip(ck, sig))
        return (final_bare + ",p=" + base64.b64encode(proof).decode()).encode()

    typ, _ = m.authenticate("SCRAM-SHA-256-PLUS", step)
    assert typ == "OK"
    assert st.get("v") == st["expect"]
    m.logout()


def test_scram_wrong_password_and_unknown_user(authed):
    for user, pw in (("alice@example.test", "nope"), ("ghost@example.test", "nope")):
        c = authed.connect("submission")
        c.starttls(client_context())
        c.ehlo()
        r, _ = _scram(c, user, pw)
        assert r.code == 535, (user, r)


def test_swaks_auth(authed):
    p = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(authed.port("submission")),
                        "--tls", "--auth", "LOGIN", "--auth-user", "alice@example.test",
                        "--auth-password", "correct horse", "--from", "alice@example.test",
                        "--to", "someone@elsewhere.example"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "235 2.7.0" in p.stdout and "queued as" in p.stdout, p.stdout


def test_implicit_tls_auth(authed):
    s = smtplib.SMTP_SSL("127.0.0.1", authed.port("submissions"), timeout=20,
                         context=client_context())
    s.login("alice@example.test", "correct horse")
    assert s.sendmail("alice@example.test", ["x@elsewhere.example"], make_message()) == {}
    s.quit()


def test_sender_must_be_owned(authed):
    ctl(authed, "account", "add", "bob@example.test")
    ctl(authed, "alias", "add", "@example.test", "alice@example.test")   # catch-all to alice
    ctl(authed, "alias", "add", "sales@example.test", "alice@example.test", "bob@example.test")
    s = smtplib_tls(authed)
    s.login("alice@example.test", "correct horse")
    for sender in ("bob@example.test", "random@example.test", "ceo@elsewhere.example", ""):
        code, msg = s.mail(sender)
        assert code == 553 and msg.startswith(b"5.7.1"), (sender, code, msg)
        s.rset()
    for sender in ("alice@example.test", "Alice+lists@example.test", "sales@example.test"):
        code, msg = s.mail(sender)
        assert code == 250, (sender, code, msg)
        s.rset()
    s.quit()
    # Clients in relay_networks without AUTH are not checked (no account).


def test_send_as_grants(tern_factory):
    """smtp.send_as lets a login send as addresses it does not own: exact
    ones and whole domains, for that login only; everything else is still
    refused with 553 5.7.1."""
    t = tern_factory({"smtp": {"send_as": [
        {"account": "alice@example.test",
         "addresses": ["Team@example.test", Quoted("@partner.example")]}]}},
                     start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test", "--password-stdin", stdin=b"correct horse\n")
    ctl(t, "account", "add", "bob@example.test", "--password-stdin", stdin=b"battery staple\n")
    t.start()
    s = smtplib_tls(t)
    s.login("alice@example.test", "correct horse")
    for sender in ("team@example.test", "TEAM@Example.Test", "anyone@partner.example",
                   "alice@example.test"):
        code, msg = s.mail(sender)
        assert code == 250, (sender, code, msg)
        s.rset()
    for sender in ("team+x@example.test", "other@example.test", "x@sub.partner.example",
                   "bob@example.test"):
        code, msg = s.mail(sender)
        assert code == 553 and msg.startswith(b"5.7.1"), (sender, code, msg)
        s.rset()
    assert s.sendmail("team@example.test", ["x@elsewhere.example"], make_message()) == {}
    s.quit()
    assert "event=send_as" in t.log() and "from=team@example.test" in t.log()
    # The grant is alice's alone.
    s = smtplib_tls(t)
    s.login("bob@example.test", "battery staple")
    code, msg = s.mail("team@example.test")
    assert code == 553, (code, msg)
    s.quit()


def test_submission_adds_date_and_message_id(authed):
    s = smtplib_tls(authed)
    s.login("alice@example.test", "correct horse")
    s.sendmail("alice@example.test", ["x@elsewhere.example"],
               "From: alice@example.test\r\nSubject: bare\r\n\r\nno date, no id\r\n")
    s.sendmail("alice@example.test", ["x@elsewhere.example"],
               "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <mine@client>\r\n"
               "Subject: complete\r\n\r\nhas both\r\n")
    s.quit()
    qids = [ln.split("qid=")[1].split()[0] for ln in authed.log().splitlines()
            if "event=queued" in ln]
    bare = authed.spool_show(qids[-2]).decode()
    assert "\nDate: " in bare and "\nMessage-ID: <" in bare and "@mail.example.test>" in bare, bare
    full = authed.spool_show(qids[-1]).decode()
    assert full.count("Message-ID:") == 1 and "<mine@client>" in full, full
    assert full.count("\nDate:") == 1, full


def test_mx_adds_nothing(authed):
    c = authed.connect("mx")
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@example.org>").code == 250
    assert c.cmd("RCPT TO:<postmaster@example.test>").code == 250
    r = c.data("Subject: bare\r\n\r\nno date\r\n")
    assert r.code == 250, r
    show = authed.spool_show(r.qid).decode()
    assert "Message-ID:" not in show and "\nDate:" not in show, show


def _client_cert(certs, tmp, cn):
    """A client certificate for `cn` signed by the test client CA."""
    key, csr, crt = (str(tmp / f"{cn}.{x}") for x in ("key", "csr", "crt"))
    for args in (["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                  "-keyout", key, "-out", csr],
                 ["x509", "-req", "-in", csr, "-CA", certs.path("ca.crt"), "-CAkey",
                  certs.path("ca.key"), "-CAcreateserial", "-days", "30", "-out", crt]):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    return crt, key


def test_external_with_client_certificate(tern_factory, certs, tmp_path):
    t = tern_factory(start=False)
    t.config["listeners"][2]["tls"] = {"mode": "implicit", "client_ca": certs.path("ca.crt"),
                                       "client_cert": "optional"}
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    crt, key = _client_cert(certs, tmp_path, "alice@example.test")
    ctx = client_context()
    ctx.load_cert_chain(crt, key)
    from conftest import Client
    c = Client(t.port("submissions"), tls=True, context=ctx)
    assert c.reply().code == 220
    r = c.ehlo()
    auth = [ln for ln in r.lines if ln.upper().startswith("AUTH ")]
    assert auth and "EXTERNAL" in auth[0], r
    r = c.cmd("AUTH EXTERNAL =")
    assert r.code == 235, r
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    # An authzid naming someone else is refused.
    c2 = Client(t.port("submissions"), tls=True, context=ctx)
    c2.reply()
    c2.ehlo()
    r = c2.cmd("AUTH EXTERNAL " + base64.b64encode(b"bob@example.test").decode())
    assert r.code == 535, r
    # A certificate for an address the directory does not know: refused.
    crt2, key2 = _client_cert(certs, tmp_path, "ghost@example.test")
    ctx2 = client_context()
    ctx2.load_cert_chain(crt2, key2)
    c3 = Client(t.port("submissions"), tls=True, context=ctx2)
    c3.reply()
    c3.ehlo()
    r = c3.cmd("AUTH EXTERNAL =")
    assert r.code == 535, r
    # Without a certificate EXTERNAL is not offered.
    c4 = Client(t.port("submissions"), tls=True)
    c4.reply()
    r = c4.ehlo()
    assert not any("EXTERNAL" in ln for ln in r.lines), r


def _jwt(claims, key="rsa.pem", kid="rsa1"):
    """An RS256 token signed with openssl, from the oauth2 test keys."""
    import json
    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64u(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    body = b64u(json.dumps(claims).encode())
    data = f"{head}.{body}".encode()
    keyfile = str(ROOT / "tests" / "data" / "oauth2" / key)
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", keyfile], input=data,
                         capture_output=True, check=True, timeout=30).stdout
    return f"{head}.{body}.{b64u(sig)}"


def test_oauthbearer_and_xoauth2(tern_factory):
    t = tern_factory({"auth": {"backends": ["internal", "oauth2"], "failure_delay": "100ms"},
                      "auth_oauth2": {"jwks_file": str(ROOT / "tests/data/oauth2/jwks.json"),
                                      "issuer": "https://idp.example.test",
                                      "audience": "tern-mail"}}, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    now = int(time.time())
    good = _jwt({"iss": "https://idp.example.test", "aud": "tern-mail", "exp": now + 600,
                 "iat": now, "email": "alice@example.test"})
    expired = _jwt({"iss": "https://idp.example.test", "aud": "tern-mail", "exp": now - 3600,
                    "email": "alice@example.test"})
    forged = _jwt({"iss": "https://idp.example.test", "aud": "tern-mail", "exp": now + 600,
                   "email": "alice@example.test"}, key="rsa-other.pem")

    def session():
        c = t.connect("submission")
        c.starttls(client_context())
        r = c.ehlo()
        auth = [ln for ln in r.lines if ln.upper().startswith("AUTH ")]
        assert auth and "OAUTHBEARER" in auth[0] and "XOAUTH2" in auth[0], r
        return c

    def oauthbearer(tok, user="alice@example.test"):
        return base64.b64encode(f"n,a={user},\x01auth=Bearer {tok}\x01\x01".encode()).decode()

    def auth(c, mech, response):
        # Tokens make the initial response longer than a command line may
        # be (512): RFC 4954 4 says to send it after the 334 instead.
        r = c.cmd("AUTH " + mech)
        assert r.code == 334, r
        return c.cmd(response)

    c = session()
    r = c.cmd("AUTH OAUTHBEARER " + oauthbearer(good))
    assert r.code == 500 and r.enhanced == "5.5.2", r       # too long as an initial response
    r = auth(c, "OAUTHBEARER", oauthbearer(good))
    assert r.code == 235, r
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250

    c = session()
    xo = base64.b64encode(f"user=alice@example.test\x01auth=Bearer {good}\x01\x01".encode())
    assert auth(c, "XOAUTH2", xo.decode()).code == 235

    for bad in (expired, forged):
        c = session()
        r = auth(c, "OAUTHBEARER", oauthbearer(bad))
        # RFC 7628 3.2.3: an error challenge first, then the failure.
        assert r.code == 334, r
        assert b'"status"' in base64.b64decode(r.text.strip()), r
        r = c.cmd(base64.b64encode(b"\x01").decode())
        assert r.code == 535, r
    # A token for alice offered as bob's: refused.
    c = session()
    r = auth(c, "OAUTHBEARER", oauthbearer(good, user="bob@example.test"))
    assert r.code == 334, r
    assert c.cmd(base64.b64encode(b"\x01").decode()).code == 535


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
def test_curl_login_options(authed, tmp_path, mech):
    features = subprocess.run(["curl", "-V"], capture_output=True, text=True).stdout
    if mech.startswith("SCRAM") and "gsasl" not in features.lower():
        pytest.skip("this curl is built without gsasl, so it has no SCRAM")
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: alice@example.test\r\nSubject: curl\r\n\r\nhi\r\n")
    p = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "30",
                        f"smtp://127.0.0.1:{authed.port('submission')}",
                        "--user", "alice@example.test:correct horse",
                        "--login-options", f"AUTH={mech}",
                        "--mail-from", "alice@example.test", "--mail-rcpt", "x@elsewhere.example",
                        "--upload-file", str(msg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"mech={mech}" in authed.log()


def test_curl_oauth2_bearer(tern_factory, tmp_path):
    t = tern_factory({"auth": {"backends": ["internal", "oauth2"]},
                      "auth_oauth2": {"jwks_file": str(ROOT / "tests/data/oauth2/jwks.json"),
                                      "issuer": "https://idp.example.test",
                                      "audience": "tern-mail"}}, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    now = int(time.time())
    tok = _jwt({"iss": "https://idp.example.test", "aud": "tern-mail", "exp": now + 600,
                "email": "alice@example.test"})
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: curl oauth\r\n\r\nhi\r\n")
    p = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "30",
                        f"smtp://127.0.0.1:{t.port('submission')}",
                        "--user", "alice@example.test:", "--oauth2-bearer", tok,
                        "--mail-from", "alice@example.test", "--mail-rcpt", "x@elsewhere.example",
                        "--upload-file", str(msg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr + t.log_tail(20)
    assert "mech=OAUTHBEARER" in t.log() or "mech=XOAUTH2" in t.log()


def test_cram_md5_with_file_backend(tern_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("carol@example.test:{PLAIN}tanstaaf\n")
    t = tern_factory({"auth": {"backends": ["file"]},
                      "auth_file": {"path": str(users)}})
    c = t.connect("submission")
    c.starttls(client_context())
    r = c.ehlo()
    auth = [ln for ln in r.lines if ln.upper().startswith("AUTH ")]
    assert auth and "CRAM-MD5" in auth[0], r
    for pw, want in (("tanstaaf", "235 2.7.0"), ("wrong", "535 5.7.8")):
        p = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(t.port("submission")),
                            "--tls", "--auth", "CRAM-MD5", "--auth-user", "carol@example.test",
                            "--auth-password", pw, "--from", "carol@example.test",
                            "--to", "x@elsewhere.example", "--quit-after", "AUTH"],
                           capture_output=True, text=True, timeout=60)
        assert want in p.stdout, p.stdout
    # A password login through the file backend creates the account (and
    # its mailboxes) in the store at first login.
    s = smtplib_tls(t)
    s.user, s.password = "carol@example.test", "tanstaaf"
    assert s.auth("PLAIN", s.auth_plain)[0] == 235
    s.quit()
    assert "carol@example.test" in ctl(t, "account", "list").stdout.decode()


def test_first_login_writes_the_store_once(tern_factory, tmp_path):
    """A file-backend user's store account (and INBOX) is made at the first
    login, whatever the mechanism: LOGIN (auth/ verifies the password) or
    CRAM-MD5 (the session verifies the digest, then asks auth/ to
    provision). Later logins find the account in auth's cache and do not
    ask the store's write thread again."""
    import imaplib
    users = tmp_path / "users"
    users.write_text("dave@example.test:{PLAIN}pw1\nerin@example.test:{PLAIN}pw2\n")
    ports = free_ports(2)
    t = tern_factory({"server": {"log_level": "debug"}, "auth": {"backends": ["file"]},
                      "auth_file": {"path": str(users)}, "listeners": None}, start=False)
    t.config["listeners"] = [
        {"name": "mx", "protocol": "smtp", "address": "127.0.0.1", "port": ports[0]},
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": ports[1],
         "tls": "none", "allow_plaintext_auth": True}]
    t.write_config()
    t.start()
    for i in range(3):
        c = imaplib.IMAP4("127.0.0.1", t.port("imap"), timeout=20)
        c.login("dave@example.test", "pw1")
        assert c.select("INBOX")[0] == "OK"
        c.logout()
        c = imaplib.IMAP4("127.0.0.1", t.port("imap"), timeout=20)
        c.login_cram_md5("Erin@example.test", "pw2")
        # The account exists by the time the login is answered.
        assert c.select("INBOX")[0] == "OK", i
        c.logout()
    log = t.log()
    ensures = [ln for ln in log.splitlines() if "event=account_ensure" in ln]
    assert len(ensures) == 2, ensures
    assert log.count("module=auth event=account_created") == 2, log
    listed = ctl(t, "account", "list").stdout.decode().lower()
    assert "dave@example.test" in listed and "erin@example.test" in listed


def test_static_login_on_one_listener(tern_factory):
    t = tern_factory(start=False)
    t.config["listeners"][1]["auth_static"] = {"username": "ingest", "password": "{PLAIN}s3cret"}
    t.write_config()
    t.start()
    s = smtplib_tls(t, "submission")
    s.login("ingest", "s3cret")
    # An ingest identity sends as whatever the device says it is.
    assert s.sendmail("alerts@device.example", ["ops@elsewhere.example"], make_message()) == {}
    s.quit()
    assert "account=ingest" in t.log()
    # Not valid on the other submission listener.
    s2 = smtplib.SMTP_SSL("127.0.0.1", t.port("submissions"), timeout=20, context=client_context())
    with pytest.raises(smtplib.SMTPAuthenticationError):
        s2.login("ingest", "s3cret")
    s2.close()


def test_lockout_counters_and_security_event(tern_factory):
    """Three wrong passwords from one address with max_failures 3: the
    third locks the address out (a security event in the log naming the
    address, not the account), the right password is then refused too, and
    `ternctl auth stats` counts all of it; a SIGHUP keeps the counters."""
    t = tern_factory({"auth": {"failure_delay": "10ms", "max_delay": "50ms", "max_failures": 3,
                               "lockout": "1h"}}, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test", "--password-stdin", stdin=b"correct horse\n")
    t.start()
    def plain(password):
        s = smtplib_tls(t)
        cred = base64.b64encode(b"\0alice@example.test\0" + password).decode()
        code, _ = s.docmd("AUTH", "PLAIN " + cred)
        s.close()
        return code

    assert plain(b"correct horse") == 235
    assert [plain(b"wrong") for _ in range(3)] == [535, 535, 535]
    assert plain(b"correct horse") == 454
    log = t.log(0)
    ev = [ln for ln in log.splitlines() if "event=security kind=auth_lockout" in ln]
    assert ev and "ip=127.0.0.1" in ev[0] and "alice" not in ev[0], ev

    def stats():
        p = ctl(t, "auth", "stats")
        return dict((k, int(v)) for k, v in (ln.split() for ln in p.stdout.decode().splitlines()))

    st = stats()
    assert st["ok"] == 1 and st["failed"] == 3 and st["refused"] >= 1, st
    assert st["lockouts_ip"] == 1 and st["lockouts_account"] == 1, st
    assert st["locked_now"] == 2 and st["tracked"] == 2, st
    t.reload({"server": {"hostname": "renamed.example.test"}})
    assert stats()["failed"] == 3
    p = ctl(t, "auth", "stats", "--json")
    assert b'"ok":true' in p.stdout and b'"failed":3' in p.stdout, p.stdout
