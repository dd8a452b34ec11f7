"""OAuth 2.0 token introspection (RFC 7662) in the oauth2 auth backend,
against a real HTTPS introspection endpoint written here (http.server +
ssl on 127.0.0.1, its certificate from a CA made with openssl for this
module). Opaque bearer tokens log in over SMTP (curl --oauth2-bearer, and a
line client for the reply codes) and IMAP (imaplib AUTHENTICATE XOAUTH2 and
OAUTHBEARER); inactive tokens are refused; an endpoint that is down, slow,
failing (5xx) or refusing our client secret (401) is a temporary failure
(454 4.7.0, NO [UNAVAILABLE]) and never a login; answers are cached, so
the endpoint is asked once per token; a JWT of our own keys is still
checked locally, unless `always` is set."""

import base64
import imaplib
import json
import poplib
import subprocess
import threading
import time
import urllib.parse
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, SLOW, TERND, TERNCTL, client_context, free_ports

CLIENT_ID = "tern-mail"
CLIENT_SECRET = "s3cret with spaces & symbols"
USER = "alice@example.test"


def _openssl(*args, cwd=None):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def idp_pki(tmp_path_factory):
    """A CA and a certificate for localhost signed by it."""
    d = tmp_path_factory.mktemp("idp")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256",
             "-subj", "/CN=Tern Test IdP CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(d / "idp.key"), "-out", str(d / "idp.csr"))
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(d / "idp.csr"), "-CA", str(d / "ca.crt"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-sha256",
             "-extfile", str(d / "ext.cnf"), "-out", str(d / "idp.crt"))
    # A second CA that signed nothing here: trusting it must fail the handshake.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256",
             "-subj", "/CN=Unrelated CA", "-keyout", str(d / "other.key"),
             "-out", str(d / "other.crt"))
    return d


class Endpoint:
    """The introspection endpoint: tokens -> answers, a request count, and
    switches for failure modes."""

    def __init__(self, pki):
        self.tokens = {}
        self.requests = []
        self.mode = "ok"          # ok, slow, 500
        self.secret = CLIENT_SECRET
        self.lock = threading.Lock()
        ep = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n).decode()
                form = urllib.parse.parse_qs(body, keep_blank_values=True)
                with ep.lock:
                    ep.requests.append({"path": self.path, "form": form,
                                        "auth": self.headers.get("Authorization", ""),
                                        "ctype": self.headers.get("Content-Type", "")})
                    mode, secret = ep.mode, ep.secret
                if mode == "slow":
                    time.sleep(3)
                if mode == "500":
                    return self._send(500, b"oops")
                want = "Basic " + base64.b64encode(
                    (urllib.parse.quote_plus(CLIENT_ID) + ":" +
                     urllib.parse.quote_plus(secret)).encode()).decode()
                if self.headers.get("Authorization") != want:
                    return self._send(401, b'{"error":"invalid_client"}',
                                      extra=[("WWW-Authenticate", 'Basic realm="idp"')])
                tok = form.get("token", [""])[0]
                answer = ep.tokens.get(tok, {"active": False})
                data = json.dumps(answer).encode()
                if mode == "chunked":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(data), 7):
                        part = data[i:i + 7]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self._send(200, data)

            def _send(self, code, data, extra=()):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.port = free_ports(1)[0]
        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass    # a client that gave up (the slow mode) is expected here
        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki / "idp.crt"), str(pki / "idp.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"https://localhost:{self.port}/oauth2/introspect"

    def count(self):
        with self.lock:
            return len(self.requests)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoint(idp_pki):
    ep = Endpoint(idp_pki)
    yield ep
    ep.close()


def ctl(t, *args):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)


def start(tern_factory, idp_pki, url, oauth2=None, listeners=(), **intro):
    ports = free_ports(1)
    cfg = {
        "auth": {"backends": ["internal", "oauth2"], "failure_delay": "50ms",
                 "max_delay": "100ms"},
        "auth_oauth2": {"introspection": {"url": url, "client_id": CLIENT_ID,
                                          "client_secret": CLIENT_SECRET,
                                          "ca_file": str(idp_pki / "ca.crt"),
                                          "timeout": "1s", **intro}, **(oauth2 or {})},
    }
    t = tern_factory(cfg, start=False)
    t.config["listeners"].append({"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                                  "port": ports[0], "tls": "starttls",
                                  "allow_plaintext_auth": True})
    t.config["listeners"].extend(listeners)
    t.write_config()
    ctl(t, "account", "add", USER)
    t.start()
    return t


def active(user=USER, **extra):
    return {"active": True, "username": user, "exp": int(time.time()) + 600,
            "client_id": "webmail", "token_type": "access_token", **extra}


# ---- SMTP -------------------------------------------------------------------

def smtp_session(t):
    c = t.connect("submission")
    c.starttls(client_context())
    r = c.ehlo()
    auth = [ln for ln in r.lines if ln.upper().startswith("AUTH ")]
    assert auth and "OAUTHBEARER" in auth[0] and "XOAUTH2" in auth[0], r
    return c


def smtp_auth(c, tok, mech="XOAUTH2", user=USER, raw=False):
    """The final reply; a refused token's error challenge (RFC 7628 3.2.3,
    and XOAUTH2's like it) is answered with %x01 unless raw."""
    if mech == "XOAUTH2":
        resp = f"user={user}\x01auth=Bearer {tok}\x01\x01"
    else:
        resp = f"n,a={user},\x01auth=Bearer {tok}\x01\x01"
    r = c.cmd("AUTH " + mech)
    assert r.code == 334, r
    r = c.cmd(base64.b64encode(resp.encode()).decode())
    if r.code == 334 and not raw:
        assert b'"status"' in base64.b64decode(r.text.strip()), r
        r = c.cmd(base64.b64encode(b"\x01").decode())
    return r


def curl_send(t, tok, tmp_path):
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: alice@example.test\r\nSubject: introspected\r\n\r\nhi\r\n")
    return subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", str(30 * SLOW),
                           f"smtp://127.0.0.1:{t.port('submission')}",
                           "--user", f"{USER}:", "--oauth2-bearer", tok,
                           "--mail-from", USER, "--mail-rcpt", "x@elsewhere.example",
                           "--upload-file", str(msg)], capture_output=True, text=True,
                          timeout=60 * SLOW)


def test_smtp_curl_opaque_token_and_cache(tern_factory, idp_pki, endpoint, tmp_path):
    endpoint.tokens["opaque-alice-1"] = active()
    t = start(tern_factory, idp_pki, endpoint.url)
    p = curl_send(t, "opaque-alice-1", tmp_path)
    assert p.returncode == 0, p.stderr + t.log_tail(20)
    assert endpoint.count() == 1
    req = endpoint.requests[0]
    assert req["path"] == "/oauth2/introspect"
    assert req["form"] == {"token": ["opaque-alice-1"], "token_type_hint": ["access_token"]}
    assert req["ctype"] == "application/x-www-form-urlencoded"
    assert "event=auth_ok service=smtp" in t.log() and "backend=oauth2" in t.log()
    # The answer is cached: a second login asks nobody.
    p = curl_send(t, "opaque-alice-1", tmp_path)
    assert p.returncode == 0, p.stderr
    assert endpoint.count() == 1
    # The token never appears in the log.
    assert "opaque-alice-1" not in t.log()


def test_smtp_inactive_and_wrong_user(tern_factory, idp_pki, endpoint):
    endpoint.tokens["opaque-bob"] = active(user="bob@example.test")
    endpoint.tokens["revoked"] = {"active": False}
    endpoint.tokens["expired"] = active(exp=int(time.time()) - 3600)
    t = start(tern_factory, idp_pki, endpoint.url)
    for tok in ("revoked", "unknown-token", "expired"):
        c = smtp_session(t)
        r = smtp_auth(c, tok)
        assert r.code == 535, (tok, r)
    n = endpoint.count()
    assert n == 3
    # Refusals are cached briefly too.
    c = smtp_session(t)
    assert smtp_auth(c, "revoked").code == 535
    assert endpoint.count() == n
    # bob's valid token offered as alice's is refused; as bob's it works.
    c = smtp_session(t)
    r = smtp_auth(c, "opaque-bob", mech="OAUTHBEARER", raw=True)
    assert r.code == 334 and b'"status"' in base64.b64decode(r.text.strip()), r
    assert c.cmd(base64.b64encode(b"\x01").decode()).code == 535
    c = smtp_session(t)
    assert smtp_auth(c, "opaque-bob", user="bob@example.test").code == 235


@pytest.mark.parametrize("failure", ["down", "slow", "500", "wrong_secret", "untrusted_ca"])
def test_endpoint_trouble_is_a_temporary_failure(tern_factory, idp_pki, endpoint, failure):
    endpoint.tokens["opaque-alice"] = active()
    url = endpoint.url
    intro = {}
    if failure == "down":
        url = f"https://127.0.0.1:{free_ports(1)[0]}/introspect"
    elif failure == "slow":
        endpoint.mode = "slow"
    elif failure == "500":
        endpoint.mode = "500"
    elif failure == "wrong_secret":
        endpoint.secret = "the secret the IdP really has"
    elif failure == "untrusted_ca":
        intro["ca_file"] = str(idp_pki / "other.crt")
    t = start(tern_factory, idp_pki, url, **intro)
    started = time.monotonic()
    c = smtp_session(t)
    r = smtp_auth(c, "opaque-alice")
    assert r.code == 454 and r.enhanced == "4.7.0", (r, t.log_tail(10))
    if failure == "slow":
        assert time.monotonic() - started < 3, "the 1s timeout was not applied"
    # Still temporary on a second try: failures are not cached.
    c = smtp_session(t)
    assert smtp_auth(c, "opaque-alice").code == 454
    line = t.wait_log(r"event=auth_error service=smtp")
    expect = {"down": "introspection failed: connection to 127.0.0.1",
              "slow": "introspection timed out",
              "500": "introspection endpoint answered HTTP 500",
              "wrong_secret": "refused our client credentials (HTTP 401)",
              "untrusted_ca": "introspection failed: TLS with localhost failed"}[failure]
    assert expect in line, line
    assert CLIENT_SECRET not in t.log()


# ---- IMAP --------------------------------------------------------------------

def imap_auth(t, mech, tok, user=USER):
    c = imaplib.IMAP4("127.0.0.1", t.port("imap"), timeout=20 * SLOW)
    if mech == "XOAUTH2":
        first = f"user={user}\x01auth=Bearer {tok}\x01\x01".encode()
    else:
        first = f"n,a={user},\x01auth=Bearer {tok}\x01\x01".encode()
    sent = []

    def respond(challenge):
        # The first continuation asks for the response; a later one is
        # RFC 7628's error challenge, answered with %x01.
        sent.append(challenge)
        return first if len(sent) == 1 else b"\x01"
    return c, lambda: c.authenticate(mech, respond)


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_imap_authenticate(tern_factory, idp_pki, endpoint, mech):
    endpoint.tokens["opaque-alice"] = active()
    endpoint.mode = "chunked"   # the answer comes in chunked transfer-coding
    t = start(tern_factory, idp_pki, endpoint.url)
    c, go = imap_auth(t, mech, "opaque-alice")
    typ, _ = go()
    assert typ == "OK"
    typ, data = c.select("INBOX")
    assert typ == "OK", data
    c.logout()
    c, go = imap_auth(t, mech, "inactive-token")
    with pytest.raises(imaplib.IMAP4.error) as e:
        go()
    assert "AUTHENTICATIONFAILED" in str(e.value), e.value
    assert endpoint.count() == 2


def test_imap_temporary_failure(tern_factory, idp_pki, endpoint):
    endpoint.mode = "500"
    t = start(tern_factory, idp_pki, endpoint.url)
    c, go = imap_auth(t, "XOAUTH2", "opaque-alice")
    with pytest.raises(imaplib.IMAP4.error) as e:
        go()
    assert "UNAVAILABLE" in str(e.value), e.value


# ---- POP3 -------------------------------------------------------------------

def test_pop3_auth(tern_factory, idp_pki, endpoint):
    endpoint.tokens["opaque-alice"] = active()
    port = free_ports(1)[0]
    start(tern_factory, idp_pki, endpoint.url,
          listeners=[{"name": "pop3s", "protocol": "pop3", "address": "127.0.0.1",
                      "port": port, "tls": "implicit"}])

    def pop(tok):
        p = poplib.POP3_SSL("127.0.0.1", port, timeout=20 * SLOW, context=client_context())
        assert p._shortcmd("AUTH XOAUTH2").startswith(b"+")
        ir = base64.b64encode(f"user={USER}\x01auth=Bearer {tok}\x01\x01".encode())
        return p, ir

    p, ir = pop("opaque-alice")
    assert p._shortcmd(ir.decode()).startswith(b"+OK")
    assert p.stat()[0] == 0
    p.quit()
    p, ir = pop("not-active")
    r = p._shortcmd(ir.decode())      # the error challenge
    assert r.startswith(b"+ ") and b"status" in base64.b64decode(r[2:])
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd(base64.b64encode(b"\x01").decode())
    endpoint.mode = "500"
    p, ir = pop("another-token")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
        p._shortcmd(ir.decode())


# ---- JWTs and introspection together -------------------------------------------

def _jwt(claims):
    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64u(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "rsa1"}).encode())
    body = b64u(json.dumps(claims).encode())
    data = f"{head}.{body}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign",
                          str(ROOT / "tests" / "data" / "oauth2" / "rsa.pem")], input=data,
                         capture_output=True, check=True, timeout=30).stdout
    return f"{head}.{body}.{b64u(sig)}"


@pytest.mark.parametrize("always", [False, True])
def test_jwt_checked_locally_unless_always(tern_factory, idp_pki, endpoint, always):
    now = int(time.time())
    tok = _jwt({"iss": "https://idp.example.test", "aud": "tern-mail", "exp": now + 600,
                "email": USER})
    endpoint.tokens[tok] = active(iss="https://idp.example.test", aud=["tern-mail"])
    t = start(tern_factory, idp_pki, endpoint.url, always=always,
              oauth2={"jwks_file": str(ROOT / "tests/data/oauth2/jwks.json"),
                      "issuer": "https://idp.example.test", "audience": "tern-mail"})
    c = smtp_session(t)
    assert smtp_auth(c, tok).code == 235
    assert endpoint.count() == (1 if always else 0)
    # An answer whose issuer is not the configured one is refused.
    endpoint.tokens["opaque-elsewhere"] = active(iss="https://other.example", aud="tern-mail")
    c = smtp_session(t)
    assert smtp_auth(c, "opaque-elsewhere").code == 535


# ---- configuration -----------------------------------------------------------------

@pytest.mark.parametrize("intro,error", [
    ({"url": "http://idp.example.com/introspect"}, "must be https://"),
    ({"url": "ftp://idp.example.com/"}, "not an http:// or https:// URL"),
    ({"url": "https://u:p@idp.example.com/"}, "credentials in the URL"),
    ({"client_secret": None}, "needs exactly one of client_secret and client_secret_file"),
    ({"client_secret_file": "secret.txt"}, "needs exactly one of client_secret and client_secret_file"),
    ({"client_id": ""}, "client_id: required"),
    ({"timeout": "1h"}, "timeout"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ({"always": True}, "only meaningful with jwks_file"),
])
def test_config_is_validated(tern_factory, tmp_path, intro, error):
    base = {"url": "https://idp.example.com/introspect", "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET}
    base.update(intro)
    base = {k: v for k, v in base.items() if v is not None}
    t = tern_factory({"auth": {"backends": ["oauth2"]},
                      "auth_oauth2": {"introspection": base}}, start=False)
    (tmp_path / "secret.txt").write_text("x\n")
    t.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t.conf_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert error in p.stdout + p.stderr, p.stdout + p.stderr
    assert CLIENT_SECRET not in p.stdout + p.stderr


def test_config_loopback_http_and_secret_file(tern_factory, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CLIENT_SECRET + "\n")
    secret.chmod(0o600)
    t = tern_factory({"auth": {"backends": ["oauth2"]},
                      "auth_oauth2": {"introspection": {
                          "url": "http://127.0.0.1:9/introspect", "client_id": CLIENT_ID,
                          "client_secret_file": str(secret)}}}, start=False)
    t.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t.conf_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    secret.chmod(0o644)
    p = subprocess.run([str(TERND), "--check-config", str(t.conf_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "readable or writable by everyone" in p.stdout + p.stderr
