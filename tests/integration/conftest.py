"""Integration fixtures: a real ternd on free loopback ports, with a temp
config, a temp state_dir and test certificates, driven by real clients.

Run with Debian's /usr/bin/python3 (python3-pytest), through tools/test or
`/usr/bin/python3 -m pytest tests/integration`. TERN_BUILD names the build
folder (default build/, tools/test --asan sets build-asan/).

Trusts: nothing from the server. Every socket read has a timeout and every
test a time limit (pytest-timeout when installed, else SIGALRM here).
"""

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_build = Path(os.environ.get("TERN_BUILD", "build"))
BUILD = _build if _build.is_absolute() else ROOT / _build
TERND = BUILD / "server" / "ternd"
TERNCTL = BUILD / "tools" / "ternctl"


def _asan_build():
    if os.environ.get("TERN_ASAN") == "1":
        return True
    try:
        opts = json.loads((BUILD / "meson-info" / "intro-buildoptions.json").read_text())
        return any(o["name"] == "b_sanitize" and o["value"] not in ("none", "", [])
                   for o in opts)
    except (OSError, ValueError, KeyError):
        return False


ASAN = _asan_build()
SLOW = 3 if ASAN else 1             # time factor for sanitizer builds
TEST_TIMEOUT = 60 * SLOW            # seconds per test, setup and teardown included
IO_TIMEOUT = 10 * SLOW              # seconds per socket read
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
    r"SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer)|"
    r"WARNING: ThreadSanitizer")

HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
HELO = "client.test"


# ---------------------------------------------------------------- time limits

def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): time limit for one test")


def pytest_collection_modifyitems(config, items):
    if config.pluginmanager.hasplugin("timeout"):
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT, method="signal"))


def _alarm_limit(item):
    m = item.get_closest_marker("timeout")
    return int(m.args[0]) if m and m.args else TEST_TIMEOUT


def _on_alarm(signum, frame):
    pytest.fail("test ran out of time (SIGALRM)", pytrace=True)


@contextlib.contextmanager
def _alarm(item):
    if item.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(_alarm_limit(item))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _alarm(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _alarm(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _alarm(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---------------------------------------------------------------- YAML writer

class Quoted(str):
    """A string always written double-quoted ("1.2")."""


_PLAIN = re.compile(r"^[A-Za-z0-9_./@+][A-Za-z0-9_./@+-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if not isinstance(v, Quoted) and _PLAIN.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s, ensure_ascii=False)


def _emit(obj, ind):
    pad = " " * ind
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out += _emit(v, ind + 2)
            elif isinstance(v, dict):
                out.append(f"{pad}{k}: {{}}")
            elif isinstance(v, list):
                out.append(f"{pad}{k}: []")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
    else:
        for item in obj:
            if isinstance(item, dict) and item:
                sub = _emit(item, ind + 2)
                sub[0] = pad + "- " + sub[0][ind + 2:]
                out += sub
            else:
                out.append(f"{pad}- {_scalar(item)}")
    return out


def to_yaml(obj):
    return "\n".join(_emit(obj, 0)) + "\n"


def merge(base, over):
    """Deep merge: dicts merge, a None value deletes the key, lists replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- certificates

class Certs:
    def __init__(self, d):
        self.dir = d

    def path(self, name):
        return str(self.dir / name)


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """Generated once per session: main (mail.example.test, RSA), other
    (other.test, for SNI and reload), cnonly (no SAN), a key that matches none, and a
    client CA with one client certificate (mTLS)."""
    d = tmp_path_factory.mktemp("certs")
    c = Certs(d)
    for name, cn, sans in (("main", HOSTNAME, f"DNS:{HOSTNAME},DNS:{DOMAIN}"),
                           ("other", "other.test", "DNS:other.test")):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-sha256",
                 "-subj", f"/CN={cn}", "-addext", f"subjectAltName={sans}",
                 "-keyout", c.path(f"{name}.key"), "-out", c.path(f"{name}.crt"))
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", c.path("stray.key"))
    # a certificate without subjectAltName: its names come from the CN
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-sha256",
             "-subj", "/CN=cnonly.test", "-addext", "basicConstraints=critical,CA:FALSE",
             "-keyout", c.path("cnonly.key"), "-out", c.path("cnonly.crt"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-sha256",
             "-subj", "/CN=Tern Test Client CA", "-keyout", c.path("ca.key"),
             "-out", c.path("ca.crt"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=alice",
             "-keyout", c.path("client.key"), "-out", c.path("client.csr"))
    _openssl("x509", "-req", "-in", c.path("client.csr"), "-CA", c.path("ca.crt"),
             "-CAkey", c.path("ca.key"), "-CAcreateserial", "-days", "30",
             "-out", c.path("client.crt"))
    return c


def cert_der(path):
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


# ---------------------------------------------------------------- postgres

def pg_database(prefix):
    """A fresh database on tools/test's PostgreSQL cluster
    (TERN_TEST_PG_CONNINFO), as a conninfo; skips the test without one."""
    ci = os.environ.get("TERN_TEST_PG_CONNINFO")
    if not ci or shutil.which("psql") is None:
        pytest.skip("no PostgreSQL cluster (tools/test starts one with tests/pg/start)")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", "-X", "-q", "-d", ci, "-c", f"CREATE DATABASE {name}"], check=True,
                   capture_output=True, timeout=60)
    if re.search(r"\bdbname=\S+", ci):
        return re.sub(r"\bdbname=\S+", f"dbname={name}", ci)
    return ci + f" dbname={name}"


# ---------------------------------------------------------------- ports

_PORTS_GIVEN = set()


def free_ports(n, family=socket.AF_INET, host="127.0.0.1"):
    """n ports free now and never handed out before in this process: the
    kernel may give a port just closed again, and a test that asks twice
    (the base config's ports, then its own listeners') would then get one
    port for two listeners."""
    socks, ports = [], []
    try:
        for _ in range(50 * n):
            if len(ports) == n:
                break
            s = socket.socket(family, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)  # held until all are chosen: no duplicate within a call
            port = s.getsockname()[1]
            if port not in _PORTS_GIVEN:
                ports.append(port)
        if len(ports) < n:
            raise RuntimeError(f"no {n} fresh free ports")
        _PORTS_GIVEN.update(ports)
        return ports
    finally:
        for s in socks:
            s.close()


def _listening_ports():
    ports = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A":  # TCP_LISTEN
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def have_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- SMTP client

class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines            # text after "NNN-" / "NNN "

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enhanced(self):
        m = re.match(r"^([245]\.\d{1,3}\.\d{1,3})\b", self.lines[0] if self.lines else "")
        return m.group(1) if m else None

    @property
    def qid(self):
        m = re.search(r"queued as ([A-Za-z0-9]+)", self.text)
        return m.group(1) if m else None

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class Client:
    """A raw SMTP client: exact bytes out, replies parsed, nothing hidden.
    `tls=True` makes it an implicit TLS connection."""

    def __init__(self, port, host="127.0.0.1", tls=False, server_hostname=HOSTNAME,
                 context=None, timeout=None, family=None):
        self.timeout = timeout or IO_TIMEOUT
        fam = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.connect((host, port))
        self.buf = b""
        self.tls = False
        if tls:
            self._wrap(context, server_hostname)

    def _wrap(self, context, server_hostname):
        ctx = context or client_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.tls = True

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by server")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise AssertionError("reply line without CRLF")
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln.decode("utf-8", "replace")

    def reply(self):
        lines = []
        while True:
            ln = self.line()
            m = re.match(r"^(\d{3})([ -])(.*)$", ln)
            assert m, f"malformed reply line {ln!r}"
            lines.append(m.group(3))
            if m.group(2) == " ":
                return Reply(int(m.group(1)), lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def ehlo(self, name=HELO):
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    def data(self, message):
        """DATA with dot-stuffing and the final dot; returns the final reply."""
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(dot_stuff(message) + b".\r\n")
        return self.reply()

    def starttls(self, context=None, server_hostname=HOSTNAME):
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        assert self.buf == b"", f"server sent bytes after its 220 to STARTTLS: {self.buf!r}"
        self._wrap(context, server_hostname)
        return r

    def quiet(self, wait=1.0):
        """Bytes that arrive within `wait` seconds (b'' if none; EOF is b'')."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return b""
        finally:
            self.sock.settimeout(self.timeout)

    def closed(self, wait=None):
        """True when the server closes the connection within `wait` seconds.
        Any bytes received before the close are kept in self.buf."""
        deadline = time.monotonic() + (wait or self.timeout)
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            except (ConnectionResetError, ssl.SSLError, OSError):
                return True
            if not chunk:
                return True
            self.buf += chunk
        self.sock.settimeout(self.timeout)
        return False

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def client_context(cafile=None, verify=False, **kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
        ctx.check_hostname = True
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def dot_stuff(message):
    if isinstance(message, str):
        message = message.encode()
    lines = message.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


def make_message(subject="test", body="Hello from the Tern test suite.\r\n", headers=(),
                 sender="alice@example.org", to="postmaster@example.test"):
    head = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}",
            "Message-ID: <%d.%d@client.test>" % (os.getpid(), time.monotonic_ns()),
            "Date: Mon, 01 Jan 2024 00:00:00 +0000"]
    head = list(headers) + head
    if isinstance(body, bytes):
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8")


def send_mail(c, mail_from="alice@example.org", rcpts=("postmaster@example.test",),
              message=None, ehlo=True, mail_params=""):
    """A whole transaction on an open Client; returns the final reply."""
    if ehlo:
        c.ehlo()
    r = c.cmd(f"MAIL FROM:<{mail_from}>{mail_params}")
    assert r.code == 250, r
    for rc in rcpts:
        r = c.cmd(f"RCPT TO:<{rc}>")
        assert r.code == 250, (rc, r)
    return c.data(message if message is not None else make_message())


# ---------------------------------------------------------------- the server

def base_config(tmp, ports, certs):
    return {
        "server": {
            "hostname": HOSTNAME,
            "workers": 2,
            "shutdown_grace": "5s",
            "log_level": "info",
            "state_dir": str(tmp / "state"),
        },
        "limits": {
            "max_connections_per_ip": 0,
            "connection_rate_per_ip": 0,
        },
        "domains": [DOMAIN],
        # Most tests send to made-up local users: accept them (the lookup
        # still goes through the store). test_directory.py covers the
        # default, verification against real accounts.
        "smtp": {"verify_recipients": False},
        # Most tests look at what the SMTP side stored: a chain that hands
        # every recipient to the remote queue keeps each message in the
        # spool where they look. test_pipeline*.py use the shipped chain.
        # ... and a held remote queue delivers none of it.
        "queue": {"hold": True},
        "processors": {
            "root": [{"match": "All", "mailet": "RemoteDelivery"}],
            "error": [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
        "tls": {
            "certificates": {
                "main": {"cert": certs.path("main.crt"), "key": certs.path("main.key"),
                         "default": True},
            },
        },
        "listeners": [
            {"name": "mx", "protocol": "smtp", "address": "127.0.0.1", "port": ports[0],
             "tls": "starttls"},
            {"name": "submission", "protocol": "submission", "address": "127.0.0.1",
             "port": ports[1], "tls": "starttls"},
            {"name": "submissions", "protocol": "submission", "address": "127.0.0.1",
             "port": ports[2], "tls": "implicit"},
        ],
    }


_live = []


def _reap_all():
    for p in _live:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(5)


class Tern:
    """One ternd: its config file, state_dir and log (its stderr)."""

    def __init__(self, tmp, certs, overrides=None):
        self.dir = tmp
        self.certs = certs
        self.conf_path = tmp / "tern.yaml"
        self.log_path = tmp / "ternd.log"
        self.state_dir = tmp / "state"
        self.state_dir.mkdir(exist_ok=True)
        self.config = merge(base_config(tmp, free_ports(3), certs), overrides or {})
        self.proc = None
        self.run_offset = 0     # where the current process's log starts
        self.runs = 0

    # ---- config
    def write_config(self, config=None, text=None):
        if config is not None:
            self.config = config
        self.conf_path.write_text(text if text is not None else to_yaml(self.config))

    def listener(self, name):
        for ln in self.config["listeners"]:
            if ln["name"] == name:
                return ln
        raise KeyError(name)

    def port(self, name="mx"):
        return self.listener(name)["port"]

    # ---- process
    def start(self, wait=True, env=None, args=None, preexec_fn=None):
        assert TERND.exists(), f"ternd not built: {TERND} (run ninja -C {BUILD})"
        if not self.conf_path.exists():
            self.write_config()
        self.run_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        e = {k: v for k, v in os.environ.items() if k not in ("TERN_CONFIG", "TERN_LOG")}
        e.update(env or {})
        logf = open(self.log_path, "ab")
        argv = [str(TERND)] + (args if args is not None else ["-c", str(self.conf_path)])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=logf, env=e, cwd=self.dir, preexec_fn=preexec_fn)
        logf.close()
        _live.append(self.proc)
        self.runs += 1
        self.env = e
        if wait:
            self.wait_ready()
        return self

    def _logs_ready(self):
        level = self.env.get("TERN_LOG") or self.config.get("server", {}).get("log_level", "info")
        return "info" in level or "debug" in level

    def wait_listening(self, timeout=None):
        """Until every listener's port is in LISTEN state (no connection
        made: probing would use up per-IP rate and connection slots)."""
        ports = {ln["port"] for ln in self.config["listeners"]}
        deadline = time.monotonic() + (timeout or 15 * SLOW)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ternd exited with {self.proc.returncode} at start-up:\n"
                                     + self.log_tail())
            if ports <= _listening_ports():
                return
            time.sleep(0.005)
        raise AssertionError(f"ternd not listening on {sorted(ports)} after start-up:\n"
                             + self.log_tail())

    def wait_ready(self, timeout=None):
        """Ports listening, then `event=ready` when the log level shows it
        (ternd installs its signal handlers just before logging it)."""
        self.wait_listening(timeout)
        if self._logs_ready():
            self.wait_log(r"\bevent=ready\b", timeout=timeout or 15 * SLOW)

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=None, timeout=None):
        """Signal (SIGTERM by default) and wait; asserts a clean exit (status 0)."""
        sig = sig or signal.SIGTERM
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.signal(sig)
        rc = self.wait_exit(timeout or (10 * SLOW + 5))
        if rc is None:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"ternd did not exit after {sig.name}:\n" + self.log_tail())
        assert rc == 0, f"ternd exited with {rc} after {sig.name}:\n" + self.log_tail()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    # ---- log
    def log(self, since=None):
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[self.run_offset if since is None else since:].decode("utf-8", "replace")

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, n=60):
        try:
            lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def wait_log(self, pattern, since=None, timeout=None):
        rx = re.compile(pattern)
        deadline = time.monotonic() + (timeout or 10 * SLOW)
        while True:
            for line in self.log(since).splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n" + self.log_tail())
            if self.proc is not None and self.proc.poll() is not None:
                # one more read: the line may have been written just before exit
                for line in self.log(since).splitlines():
                    if rx.search(line):
                        return line
                raise AssertionError(f"ternd exited ({self.proc.returncode}) before logging "
                                     f"{pattern!r}:\n" + self.log_tail())
            time.sleep(0.05)

    def sanitizer_reports(self):
        return [ln for ln in self.log(0).splitlines() if SANITIZER_RE.search(ln)]

    # ---- reload
    def reload(self, overrides=None, config=None, text=None, expect="ok", wait=True):
        """Rewrites the config, sends SIGHUP and waits for the reload line
        (unless wait=False). Returns the log written since the SIGHUP."""
        if overrides is not None:
            config = merge(self.config, overrides)
        since = self.log_size()
        if text is not None:
            self.write_config(text=text)
        elif config is not None:
            # a refused config must not replace the one we believe is live
            if expect == "ok":
                self.write_config(config)
            else:
                self.conf_path.write_text(to_yaml(config))
        self.signal(signal.SIGHUP)
        if wait:
            self.wait_log(rf"event=reload\b.*\bstatus={expect}\b", since=since)
        return self.log(since)

    def restore_config(self):
        self.write_config(self.config)

    # ---- clients
    def client(self, name="mx", **kw):
        ln = self.listener(name)
        host = ln.get("address", "127.0.0.1")
        if host in ("0.0.0.0",):
            host = "127.0.0.1"
        if host == "::":
            host = "::1"
        tls = ln.get("tls") == "implicit" or (isinstance(ln.get("tls"), dict)
                                              and ln["tls"].get("mode") == "implicit")
        c = Client(ln["port"], host=host, tls=kw.pop("tls", tls), **kw)
        return c

    def connect(self, name="mx", **kw):
        """A Client past the 220 banner."""
        c = self.client(name, **kw)
        r = c.reply()
        assert r.code == 220, r
        c.banner = r
        return c

    # ---- ternctl
    def ternctl(self, *args, check=True):
        assert TERNCTL.exists(), f"ternctl not built: {TERNCTL}"
        p = subprocess.run([str(TERNCTL), *args, "-d", str(self.state_dir)],
                           capture_output=True, timeout=30 * SLOW)
        if check:
            assert p.returncode == 0, (f"ternctl {' '.join(args)} exited {p.returncode}: "
                                       f"{p.stderr.decode(errors='replace')}")
        return p

    def spool_list(self):
        return self.ternctl("spool", "list").stdout.decode("utf-8", "replace")

    def spool_count(self):
        out = self.ternctl("spool", "count").stdout.decode()
        m = re.search(r"\d+", out)
        assert m, f"ternctl spool count printed {out!r}"
        return int(m.group(0))

    def spool_show(self, qid):
        return self.ternctl("spool", "show", qid).stdout


def check_config(path):
    assert TERND.exists(), f"ternd not built: {TERND}"
    p = subprocess.run([str(TERND), "--check-config", str(path)], capture_output=True,
                       timeout=30 * SLOW, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


@pytest.fixture
def tern_factory(tmp_path, certs, request):
    """tern_factory(overrides, start=True) -> Tern. Every server it made is
    stopped with SIGTERM at teardown, must exit 0, and (under sanitizers or
    not) must not have printed a sanitizer report."""
    made = []

    def make(overrides=None, start=True, subdir=None):
        d = tmp_path / (subdir or f"t{len(made)}")
        d.mkdir(exist_ok=True)
        t = Tern(d, certs, overrides)
        made.append(t)
        if start:
            t.write_config()
            t.start()
        return t

    yield make

    problems = []
    for t in made:
        try:
            if t.running():
                t.stop()
        except AssertionError as e:
            problems.append(str(e))
        reports = t.sanitizer_reports()
        if reports:
            problems.append("sanitizer report in ternd's stderr:\n" + t.log_tail(200))
    failed = getattr(request.node, "rep_call", None)
    if problems or (failed is not None and failed.failed):
        for t in made:
            print(f"---- ternd log {t.log_path}:\n{t.log_tail(80)}")
    _reap_all()
    assert not problems, "\n".join(problems)


@pytest.fixture
def tern(tern_factory):
    """A running ternd with the base config."""
    return tern_factory()
