"""The SMTP client of remote delivery (protocols/smtp/smtp_client.c and
smtp_pool.c): connection reuse, BDAT, 8BITMIME downconversion, AUTH to a
smarthost, source addresses. The sender is a real ternd; the
receiver is a second ternd (remote.test's MX, as in test_queue.py) or the
scriptable receiver in mini_smtp.py where a test needs to take extensions
away or misbehave."""

import re
import time
import uuid

import pytest

from conftest import SLOW, make_message
from mini_smtp import MiniSMTP
from test_queue import LOCAL, ctl, dns, maildir_find, send_mail, spool_count, wait_for  # noqa: F401


def make_pair(tern_factory, dns_port, queue=None):
    rx = tern_factory({"domains": ["remote.test"], "smtp": {"verify_recipients": True},
                       **LOCAL}, start=False, subdir="rx")
    rx.write_config()
    ctl(rx, "account", "add", "bob@remote.test")
    rx.start()
    tx = tern_factory({
        "dns": {"resolvers": [f"127.0.0.1@{dns_port}"], "dnssec": False,
                "unblock_zones": ["test"]},
        "queue": {"hold": False, "port": rx.config["listeners"][0]["port"], "retry_min": "1s",
                  "connect_timeout": "2s", **(queue or {})},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "processors": {"root": [{"match": "All", "mailet": "RemoteDelivery"}],
                       "transport": [{"match": "All", "mailet": "LocalDelivery"}],
                       "error": [{"match": "All", "mailet": "RemoteDelivery"}],
                       "bounces": [{"match": "All", "mailet": "RemoteDelivery"}]},
    }, start=False, subdir="tx")
    tx.write_config()
    ctl(tx, "account", "add", "alice@example.test")
    tx.start()
    return tx, rx


def to_mini(tern_factory, mini, queue=None):
    """A sender whose queue goes to the mini receiver as its smarthost."""
    return tern_factory({
        "queue": {"hold": False, "smarthost": f"[127.0.0.1]:{mini.port}", "retry_min": "1s",
                  "connect_timeout": "2s", **(queue or {})},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "processors": {"root": [{"match": "All", "mailet": "RemoteDelivery"}]},
    })


@pytest.fixture
def mini_factory():
    made = []

    def make(**kw):
        made.append(MiniSMTP(**kw))
        return made[-1]

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def mini(mini_factory):
    return mini_factory()


def submit(t, rcpt, message):
    r = send_mail(t, "alice@example.test", [rcpt], message)
    assert r.code == 250, r
    return r


def connects(rx):
    return len(re.findall(r"event=connect session=\S+ ip=127\.0\.0\.\d+ port=\d+ listener=mx",
                          rx.log(0)))


def test_pool_sends_many_messages_over_few_connections(tern_factory, dns):
    tx, rx = make_pair(tern_factory, dns, {"per_destination": 2})
    markers = [uuid.uuid4().hex for _ in range(20)]
    c = tx.connect()
    try:
        c.ehlo()
        for m in markers:
            r = c.cmd("MAIL FROM:<alice@example.test>")
            assert r.code == 250, r
            assert c.cmd("RCPT TO:<bob@remote.test>").code == 250
            assert c.data(make_message(subject=m, body=f"{m}\r\n")).code == 250
    finally:
        c.cmd("QUIT")
    for m in markers:
        assert wait_for(lambda: maildir_find(rx, "bob", "remote.test", m)), tx.log_tail()
    assert wait_for(lambda: spool_count(tx) == 0)
    n = connects(rx)
    # Two deliveries at a time at most; each connection carries many messages.
    print(f"20 messages over {n} connection(s)")
    assert 1 <= n <= 6, (n, rx.log_tail())
    assert "event=host_failed" not in tx.log(0)
    # Messages on kept connections still went over the TLS set up once.
    assert len(re.findall(r"TLSv1\.2 unverified", tx.log(0))) == 20


def test_idle_connection_quits_and_next_message_reconnects(tern_factory, mini):
    tx = to_mini(tern_factory, mini, {"connection_idle_timeout": "300ms"})
    m1, m2 = uuid.uuid4().hex, uuid.uuid4().hex
    submit(tx, "bob@remote.test", make_message(subject=m1))
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    # The idle connection says QUIT after the idle timeout.
    assert wait_for(lambda: (1, "QUIT") in mini.commands), mini.commands
    submit(tx, "bob@remote.test", make_message(subject=m2))
    assert wait_for(lambda: len(mini.messages) == 2), tx.log_tail()
    assert [m["conn"] for m in mini.messages] == [1, 2]
    assert m2.encode() in mini.messages[1]["data"]
    assert "event=host_failed" not in tx.log(0)


def test_kept_connection_reused_with_rset(tern_factory, mini):
    tx = to_mini(tern_factory, mini, {"connection_idle_timeout": "30s"})
    for _ in range(3):
        submit(tx, "bob@remote.test", make_message(subject=uuid.uuid4().hex))
        n = len(mini.messages) + 1
        assert wait_for(lambda: len(mini.messages) == n), tx.log_tail()
    assert [m["conn"] for m in mini.messages] == [1, 1, 1]
    cmds = [c for n, c in mini.commands]
    assert cmds.count("RSET") == 2 and len([c for c in cmds if c.startswith("EHLO")]) == 1


def test_dead_kept_connection_is_replaced_without_loss(tern_factory, mini_factory):
    mini = mini_factory(close_on_rset=1)
    tx = to_mini(tern_factory, mini, {"connection_idle_timeout": "30s"})
    m1, m2 = uuid.uuid4().hex, uuid.uuid4().hex
    submit(tx, "bob@remote.test", make_message(subject=m1))
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    # The receiver drops the connection when the next message's RSET comes.
    r = submit(tx, "bob@remote.test", make_message(subject=m2))
    assert wait_for(lambda: len(mini.messages) == 2), tx.log_tail()
    assert mini.messages[1]["conn"] == 2 and m2.encode() in mini.messages[1]["data"]
    log = tx.log(0)
    assert "event=reuse_failed" in log
    assert re.search(rf"event=delivered qid={r.qid} ", log), log
    # Not a host failure, not a deferral: the same attempt went on.
    assert "event=host_failed" not in log and "event=deferred" not in log


def test_bdat_when_offered(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "8BITMIME", "CHUNKING"])
    tx = to_mini(tern_factory, mini)
    body = "line one\r\n.leading dot\r\n..two dots\r\n\r\nend without trailing crlf? no\r\n"
    msg = make_message(subject="bdat", body=body)
    submit(tx, "bob@remote.test", msg)
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    got = mini.messages[0]
    assert got["via"] == "BDAT"
    # Not dot-stuffed: the bytes as submitted (after the sender's trace field).
    assert got["data"].endswith(msg), got["data"]
    assert not any(c.startswith("DATA") for n, c in mini.commands)


def test_use_chunking_off_sends_data(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "8BITMIME", "CHUNKING"])
    tx = to_mini(tern_factory, mini, {"use_chunking": False})
    msg = make_message(subject="data", body="a\r\n.b\r\n")
    submit(tx, "bob@remote.test", msg)
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    assert mini.messages[0]["via"] == "DATA" and mini.messages[0]["data"].endswith(msg)


def test_bdat_to_ternd_arrives_byte_identical(tern_factory, dns):
    tx, rx = make_pair(tern_factory, dns)
    marker = uuid.uuid4().hex
    body = (f"{marker}\r\n.dot line\r\n" + "x" * 998 + "\r\n") * 300  # several hundred KB
    msg = make_message(subject=marker, body=body)
    submit(tx, "bob@remote.test", msg)
    got = wait_for(lambda: maildir_find(rx, "bob", "remote.test", marker))
    assert got, tx.log_tail()
    assert got[0].read_bytes().endswith(msg)


def test_8bit_message_downconverted_for_a_7bit_server(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "SIZE 10000000"])  # no 8BITMIME
    tx = to_mini(tern_factory, mini)
    body = ("--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\ncaf\u00e9 cr\u00e8me\r\n"
            "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "aGVsbG8=\r\n--b--\r\n")
    msg = make_message(subject="8bit", body=body,
                       headers=["MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=b"])
    c = tx.connect()
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME").code == 250
        assert c.cmd("RCPT TO:<bob@remote.test>").code == 250
        assert c.data(msg).code == 250
    finally:
        c.cmd("QUIT")
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    got = mini.messages[0]["data"]
    assert all(b < 128 for b in got), got
    assert b"caf=C3=A9 cr=C3=A8me" in got
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in got
    assert b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--" in got
    mail = [cmd for n, cmd in mini.commands if cmd.startswith("MAIL")]
    assert mail and "BODY=8BITMIME" not in mail[0]
    assert "event=downconverted" in tx.log(0)


def test_8bit_message_unchanged_for_an_8bit_server(tern_factory, mini):
    tx = to_mini(tern_factory, mini)  # offers 8BITMIME
    msg = make_message(subject="8bit", body="caf\u00e9\r\n",
                       headers=["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                                "Content-Transfer-Encoding: 8bit"])
    c = tx.connect()
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME").code == 250
        assert c.cmd("RCPT TO:<bob@remote.test>").code == 250
        assert c.data(msg).code == 250
    finally:
        c.cmd("QUIT")
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    assert mini.messages[0]["data"].endswith(msg)
    mail = [cmd for n, cmd in mini.commands if cmd.startswith("MAIL")]
    assert "BODY=8BITMIME" in mail[0]


# ---- AUTH to a smarthost ----------------------------------------------------

def test_auth_to_smarthost_submission_over_tls(tern_factory, tmp_path):
    """The smarthost is a second ternd's submission listener (STARTTLS,
    AUTH required); the password comes from a file only we can read."""
    rx = tern_factory({"domains": ["remote.test", "example.test"], **LOCAL}, start=False,
                      subdir="rx")
    rx.write_config()
    ctl(rx, "account", "add", "bob@remote.test")
    import subprocess
    from conftest import TERNCTL
    p = subprocess.run([str(TERNCTL), "-c", str(rx.conf_path), "account", "add",
                        "alice@example.test", "--password-stdin"], input=b"s3cret pw\n",
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rx.start()
    pwfile = tmp_path / "smarthost.pw"
    pwfile.write_text("s3cret pw\n")
    pwfile.chmod(0o600)
    tx = tern_factory({
        "queue": {"hold": False, "smarthost": f"[127.0.0.1]:{rx.port('submission')}",
                  "retry_min": "1s", "connect_timeout": "2s", "smarthost_tls": "required",
                  "smarthost_auth": {"username": "alice@example.test",
                                     "password_file": str(pwfile)}},
        "smtp": {"relay_networks": ["127.0.0.0/8"]},
        "processors": {"root": [{"match": "All", "mailet": "RemoteDelivery"}]},
    })
    marker = uuid.uuid4().hex
    r = submit(tx, "bob@remote.test", make_message(subject=marker, sender="alice@example.test"))
    got = wait_for(lambda: maildir_find(rx, "bob", "remote.test", marker))
    assert got, tx.log_tail() + rx.log_tail()
    # The receiver's file can appear before the sender has read the 250
    # and logged the delivery.
    assert wait_for(lambda: f"event=delivered qid={r.qid} " in tx.log(0)), tx.log_tail()
    log = tx.log(0)
    assert re.search(r"event=authenticated peer=127\.0\.0\.1:\d+ user=alice@example.test", log)
    assert re.search(rf"event=delivered qid={r.qid} .*TLSv1\.[23]", log), log
    assert "s3cret" not in log and "s3cret" not in rx.log(0)
    assert b"with ESMTPSA" in got[0].read_bytes()


def test_smarthost_tls_verify(tern_factory, certs):
    """smarthost_tls: verify delivers only when the smarthost's certificate
    verifies against smarthost_ca_file for smarthost_tls_name (the
    smarthost is given by address here); otherwise the mail is deferred
    with 4.7.5 and nothing is sent."""
    rx = tern_factory({"domains": ["remote.test", "example.test"], **LOCAL}, start=False,
                      subdir="rx")
    rx.write_config()
    ctl(rx, "account", "add", "bob@remote.test")
    rx.start()

    made = []

    def relay(**q):
        made.append(q)
        return tern_factory({
            "queue": {"hold": False, "smarthost": f"[127.0.0.1]:{rx.port('mx')}",
                      "retry_min": "1s", "connect_timeout": "2s", "smarthost_tls": "verify",
                      **q},
            "smtp": {"relay_networks": ["127.0.0.0/8"]},
            "processors": {"root": [{"match": "All", "mailet": "RemoteDelivery"}]},
        }, subdir=f"tx{len(made)}")

    # The right CA and name: delivered, and the log says verified.
    tx = relay(smarthost_ca_file=str(certs.path("main.crt")),
               smarthost_tls_name="mail.example.test")
    marker = uuid.uuid4().hex
    r = submit(tx, "bob@remote.test", make_message(subject=marker))
    assert wait_for(lambda: maildir_find(rx, "bob", "remote.test", marker)), tx.log_tail()
    assert wait_for(lambda: f"event=delivered qid={r.qid} " in tx.log(0)), tx.log_tail()
    assert re.search(rf"event=delivered qid={r.qid} .*TLSv1\.[23][^)]* verified", tx.log(0))
    tx.stop()

    # A CA that did not sign it, or a name it does not carry: deferred.
    for q in ({"smarthost_ca_file": str(certs.path("other.crt")),
               "smarthost_tls_name": "mail.example.test"},
              {"smarthost_ca_file": str(certs.path("main.crt")),
               "smarthost_tls_name": "wrong.example.test"}):
        tx = relay(**q)
        marker = uuid.uuid4().hex
        r = submit(tx, "bob@remote.test", make_message(subject=marker))
        assert wait_for(lambda: re.search(rf"event=deferred qid={r.qid} .*4\.7\.5",
                                          tx.log(0))), tx.log_tail()
        assert not maildir_find(rx, "bob", "remote.test", marker)
        tx.stop()


def test_smarthost_tls_required_defers_without_starttls(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "AUTH PLAIN LOGIN"])
    tx = to_mini(tern_factory, mini, {"smarthost_tls": "required",
                                      "smarthost_auth": {"username": "u", "password": "pw"}})
    r = submit(tx, "bob@remote.test", make_message())
    assert wait_for(lambda: re.search(rf"event=deferred qid={r.qid} .*4\.7\.10", tx.log(0))), \
        tx.log_tail()
    assert not mini.logins and not mini.messages
    assert not any(c.startswith(("AUTH", "MAIL")) for n, c in mini.commands)


def test_no_credentials_in_clear_by_default(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "AUTH PLAIN LOGIN"])
    tx = to_mini(tern_factory, mini, {"smarthost_auth": {"username": "u", "password": "pw"}})
    r = submit(tx, "bob@remote.test", make_message())
    assert wait_for(lambda: re.search(rf"event=deferred qid={r.qid} .*4\.7\.10", tx.log(0))), \
        tx.log_tail()
    assert not mini.logins and not mini.messages


def test_auth_login_when_plain_is_not_offered(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "8BITMIME", "AUTH LOGIN"])
    tx = to_mini(tern_factory, mini, {"smarthost_auth": {
        "username": "user@relay.test", "password": "p\u00e4ss word", "allow_plaintext": True}})
    submit(tx, "bob@remote.test", make_message())
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    assert mini.logins == [("LOGIN", "user@relay.test", "p\u00e4ss word")]
    submit(tx, "bob@remote.test", make_message())
    assert wait_for(lambda: len(mini.messages) == 2), tx.log_tail()
    # The kept connection is still authenticated: no second AUTH.
    assert len(mini.logins) == 1 and mini.messages[1]["conn"] == 1


def test_auth_plain_preferred(tern_factory, mini_factory):
    mini = mini_factory(extensions=["PIPELINING", "AUTH LOGIN PLAIN"])
    tx = to_mini(tern_factory, mini, {"smarthost_auth": {
        "username": "u", "password": "pw", "allow_plaintext": True}})
    submit(tx, "bob@remote.test", make_message())
    assert wait_for(lambda: len(mini.messages) == 1), tx.log_tail()
    assert mini.logins == [("PLAIN", "u", "pw")]


def test_smarthost_auth_config_checks(tern_factory, tmp_path):
    from conftest import check_config, to_yaml
    t = tern_factory(start=False)
    pw = tmp_path / "open.pw"
    pw.write_text("topsecret\n")
    pw.chmod(0o644)
    cases = [
        ({"smarthost": "[127.0.0.1]:25", "smarthost_auth": {"username": "u",
                                                             "password_file": str(pw)}},
         "readable or writable by everyone"),
        ({"smarthost": "[127.0.0.1]:25", "smarthost_auth": {"username": "u"}},
         "exactly one of password and password_file"),
        ({"smarthost_auth": {"username": "u", "password": "topsecret"}}, "needs queue.smarthost"),
        ({"smarthost": "[127.0.0.1]:25", "smarthost_tls": "sometimes"}, "smarthost_tls"),
        ({"source_addresses": [{"address": "mx.example.test"}]}, "not an IPv4 or IPv6 address"),
        ({"source_addresses": [{"helo": "mx.example.test"}]}, "address"),
    ]
    for queue, want in cases:
        path = t.dir / "check.yaml"
        cfg = dict(t.config)
        cfg["queue"] = queue
        path.write_text(to_yaml(cfg))
        rc, out, err = check_config(path)
        assert rc == 1 and want in err, (queue, err)
        assert "topsecret" not in err + out
    pw.chmod(0o600)
    cfg = dict(t.config)
    cfg["queue"] = {"smarthost": "[127.0.0.1]:25",
                    "smarthost_auth": {"username": "u", "password_file": str(pw)}}
    path = t.dir / "check.yaml"
    path.write_text(to_yaml(cfg))
    rc, out, err = check_config(path)
    assert rc == 0, err


# ---- source addresses -------------------------------------------------------

def test_source_address_and_its_helo(tern_factory, dns):
    tx, rx = make_pair(tern_factory, dns, {
        "source_addresses": [{"address": "127.0.0.2", "helo": "mx2.example.test"}],
        "connection_reuse_limit": 1})
    marker = uuid.uuid4().hex
    submit(tx, "bob@remote.test", make_message(subject=marker))
    got = wait_for(lambda: maildir_find(rx, "bob", "remote.test", marker))
    assert got, tx.log_tail()
    assert re.search(r"event=connect session=\S+ ip=127\.0\.0\.2 port=\d+ listener=mx", rx.log(0))
    assert not re.search(r"event=connect session=\S+ ip=127\.0\.0\.1 port=\d+ listener=mx",
                         rx.log(0))
    assert b"from mx2.example.test" in got[0].read_bytes()


def test_source_addresses_round_robin(tern_factory, mini_factory):
    mini = mini_factory()
    tx = to_mini(tern_factory, mini, {
        "connection_reuse_limit": 1,
        "source_addresses": [{"address": "127.0.0.2", "helo": "a.example.test"},
                             {"address": "127.0.0.3"},
                             {"address": "::1"}]})  # not used for an IPv4 destination
    for i in range(4):
        submit(tx, "bob@remote.test", make_message())
        assert wait_for(lambda: len(mini.messages) == i + 1), tx.log_tail()
    assert mini.connections == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
    ehlo = [c for n, c in mini.commands if c.startswith("EHLO")]
    assert ehlo[0] == "EHLO a.example.test" and ehlo[1] == f"EHLO {tx.config['server']['hostname']}"
