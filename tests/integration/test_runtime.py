"""The runtime around the sessions: listeners added and removed by SIGHUP
without touching open sessions, SO_REUSEPORT listeners (one socket per
worker), and binding a port below
1024 as root before dropping to server.user."""

import os
import pwd
import shutil
import socket
import tempfile

import pytest

from conftest import SLOW, Client, free_ports, make_message, send_mail


def can_connect(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_reload_adds_and_removes_listeners(tern_factory):
    t = tern_factory()
    old = t.connect("submission")
    old.ehlo()
    extra = free_ports(1)[0]
    listeners = [ln for ln in t.config["listeners"] if ln["name"] != "submission"]
    listeners.append({"name": "mx2", "protocol": "smtp", "address": "127.0.0.1", "port": extra,
                      "tls": "none"})
    log = t.reload(config=dict(t.config, listeners=listeners))
    assert "event=listening listener=mx2" in log, log
    assert "event=listener_removed" in log, log
    # the new listener serves, the removed one refuses new connections...
    c = t.connect("mx2")
    assert send_mail(c).code == 250
    assert not can_connect(old.sock.getpeername()[1])
    # ...while the session opened on it before the reload carries on.
    assert old.cmd("NOOP").code == 250
    assert old.cmd("QUIT").code == 221


def test_reload_moves_listener_to_new_port(tern_factory):
    t = tern_factory()
    before = t.port("mx")
    new = free_ports(1)[0]
    listeners = [dict(ln) for ln in t.config["listeners"]]
    for ln in listeners:
        if ln["name"] == "mx":
            ln["port"] = new
    t.reload(config=dict(t.config, listeners=listeners))
    assert not can_connect(before)
    c = t.connect("mx")
    assert c.ehlo().code == 250


def test_reload_with_unbindable_listener_keeps_everything(tern_factory):
    t = tern_factory()
    # A port held by someone else: the new snapshot cannot be served whole,
    # so none of it is taken (the old listeners and limits stay).
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        listeners = t.config["listeners"] + [
            {"name": "busy", "protocol": "smtp", "address": "127.0.0.1", "port": busy}]
        cfg = dict(t.config, listeners=listeners, smtp={"max_recipients": 1})
        log = t.reload(config=cfg, expect="failed")
        assert "reload_listener_failed" in log, log
        c = t.connect("mx")
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@example.org>").code == 250
        assert c.cmd("RCPT TO:<x@example.test>").code == 250
        assert c.cmd("RCPT TO:<y@example.test>").code == 250  # old max_recipients
    finally:
        holder.close()


def test_reuseport_listener(tern_factory):
    port = free_ports(1)[0]
    t = tern_factory({"listeners": [
        {"name": "mx", "protocol": "smtp", "address": "127.0.0.1", "port": port, "reuse": True}]})
    line = t.wait_log(r"event=listening listener=mx\b")
    assert "sockets=2" in line, line
    # Every connection is served whichever worker's socket the kernel picks.
    codes = []
    for i in range(12):
        with t.connect("mx") as c:
            codes.append(send_mail(c, rcpts=(f"r{i}@example.test",)).code)
    assert codes == [250] * 12
    assert t.spool_count() == 12


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind below 1024 and drop privileges")
def test_low_port_then_drop_privileges(tern_factory):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    port = None
    for p in range(940, 1000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            port = p
            break
        except OSError:
            continue
        finally:
            s.close()
    if port is None:
        pytest.skip("no free port below 1024")
    # The unprivileged user must be able to reach the state dir and re-read
    # the config on SIGHUP: use a world-traversable directory.
    top = tempfile.mkdtemp(prefix="tern-priv-", dir="/tmp")
    os.chmod(top, 0o755)
    state = os.path.join(top, "state")
    t = tern_factory({"server": {"user": "nobody", "state_dir": state},
                      "listeners": [{"name": "mx", "protocol": "smtp", "address": "127.0.0.1",
                                     "port": port, "tls": "none"}]}, start=False)
    t.state_dir = type(t.state_dir)(state)
    t.conf_path = type(t.conf_path)(os.path.join(top, "tern.yaml"))
    # As an admin would: the key readable only by the service user, since
    # a reload re-reads it after the privileges are gone.
    tls = {}
    for name in ("main.crt", "main.key"):
        dst = os.path.join(top, name)
        shutil.copy(t.certs.path(name), dst)
        os.chown(dst, nobody.pw_uid, nobody.pw_gid)
        os.chmod(dst, 0o600)
        tls[name] = dst
    t.config["tls"]["certificates"]["main"].update(cert=tls["main.crt"], key=tls["main.key"])
    t.write_config()
    os.chmod(t.conf_path, 0o644)
    t.start()
    line = t.wait_log(r"event=privileges_dropped")
    assert "user=nobody" in line
    with open(f"/proc/{t.pid}/status") as f:
        uids = next(ln for ln in f if ln.startswith("Uid:")).split()[1:]
    assert all(int(u) == nobody.pw_uid for u in uids), uids
    c = t.connect("mx")
    assert send_mail(c).code == 250
    for root, dirs, files in os.walk(os.path.join(state, "spool")):
        for n in dirs + files:
            assert os.stat(os.path.join(root, n)).st_uid == nobody.pw_uid, n
    # Reload still works as the unprivileged user.
    assert "status=ok" in t.reload({"smtp": {"max_recipients": 3}})
    assert t.spool_count() == 1
