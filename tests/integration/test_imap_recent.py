"""\\Recent (RFC 3501 2.3.2) against a real ternd on both backends: mail
delivered over SMTP is recent for the first session that SELECTs the
mailbox and for no other; EXAMINE sees it without taking it; mail that
arrives while a session is selected is recent for the session that
notices it first; SEARCH RECENT/NEW/OLD follow the session's set; STATUS
RECENT counts what nobody claimed; a session that enabled IMAP4rev2 (RFC
9051, no \\Recent) neither reports nor claims. Every wait is bounded.
"""

import re
import smtplib
import time

import pytest

from conftest import SLOW, free_ports
from test_imap import PASSWORD, USER, _pg_conninfo, connect, ctl, msg

# Mail for our domain goes to the store (the fixtures' default chain holds
# everything in the remote queue).
LOCAL_ONLY = {
    "root": [{"match": "All", "mailet": "ToProcessor", "processor": "deliver"}],
    "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
    "error": [{"match": "All", "mailet": "RemoteDelivery"}],
    "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
}


@pytest.fixture(params=["local", "pg"])
def imap(request, tern_factory):
    ports = free_ports(2)
    t = tern_factory({"listeners": None, "processors": LOCAL_ONLY}, start=False)
    cfg = t.config
    cfg["processors"] = LOCAL_ONLY
    cfg["listeners"] = [
        {"name": "mx", "protocol": "smtp", "address": "127.0.0.1", "port": ports[0]},
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": ports[1],
         "tls": "starttls", "allow_plaintext_auth": True},
    ]
    if request.param == "pg":
        cfg["storage"] = {"backend": "postgres"}
        cfg["postgres"] = {"conninfo": _pg_conninfo()}
    t.write_config()
    ctl(t, "account", "add", USER, "--password-stdin", stdin=(PASSWORD + "\n").encode())
    t.start()
    return t


def deliver(t, subject):
    with smtplib.SMTP("127.0.0.1", t.port("mx"), timeout=10 * SLOW) as s:
        s.sendmail("bob@example.org", [USER], msg(subject=subject, frm="bob@example.org"))


def status(c, item="MESSAGES RECENT"):
    typ, data = c.status("INBOX", f"({item})")
    assert typ == "OK", data
    return {k.decode(): int(v) for k, v in re.findall(rb"([A-Z]+) (\d+)", data[0])}


def wait_messages(c, n):
    deadline = time.monotonic() + 15 * SLOW
    while time.monotonic() < deadline:
        if status(c)["MESSAGES"] >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"delivery of message {n} did not arrive")


def untagged(c, name):
    return [x if isinstance(x, bytes) else x[0] for x in c.untagged_responses.pop(name, [])]


def flags(c, n):
    """The FLAGS of message n (imaplib also hands back unsolicited FETCHes)."""
    typ, data = c.fetch(str(n), "(FLAGS)")
    assert typ == "OK", data
    for d in data:
        d = d if isinstance(d, bytes) else d[0]
        m = re.match(rb"%d \(.*FLAGS \(([^)]*)\)" % n, d)
        if m:
            return m.group(1).split()
    raise AssertionError(f"no FETCH for {n}: {data}")


def search(c, *keys):
    typ, data = c.search(None, *keys)
    assert typ == "OK", data
    return data[0].split()


def noop_until_exists(c, n):
    deadline = time.monotonic() + 15 * SLOW
    while time.monotonic() < deadline:
        typ, _ = c.noop()
        assert typ == "OK"
        ex = c.untagged_responses.get("EXISTS")
        if ex and int(ex[-1]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no EXISTS {n}")


def test_recent_goes_to_the_first_select(imap):  
    a, b, watcher = connect(imap), connect(imap), connect(imap)
    deliver(imap, "first")
    wait_messages(watcher, 1)
    assert status(watcher)["RECENT"] == 1

    # EXAMINE shows it recent and leaves it recent for the next session.
    typ, data = a.select("INBOX", readonly=True)
    assert typ == "OK", data
    assert untagged(a, "RECENT") == [b"1"]
    assert b"\\Recent" in flags(a, 1)
    assert search(a, "RECENT") == [b"1"]
    a.close()
    assert status(watcher)["RECENT"] == 1

    # The first SELECT takes it...
    typ, data = a.select("INBOX")
    assert typ == "OK", data
    assert untagged(a, "RECENT") == [b"1"]
    assert b"\\Recent" in flags(a, 1)
    assert search(a, "RECENT") == [b"1"]
    assert search(a, "NEW") == [b"1"]
    assert search(a, "OLD") == []
    assert status(watcher)["RECENT"] == 0

    # ...and the second does not get it.
    typ, data = b.select("INBOX")
    assert typ == "OK", data
    assert untagged(b, "RECENT") == [b"0"]
    assert b"\\Recent" not in flags(b, 1)
    assert search(b, "RECENT") == []
    assert search(b, "OLD") == [b"1"]

    # Seen, it is no longer NEW but still RECENT; STORE answers carry \Recent.
    typ, data = a.store("1", "+FLAGS", "(\\Seen)")
    assert typ == "OK" and b"\\Recent" in data[0], data
    assert search(a, "NEW") == []
    assert search(a, "RECENT") == [b"1"]

    # Mail arriving while both are selected: the one that notices first.
    deliver(imap, "second")
    wait_messages(watcher, 2)
    assert status(watcher)["RECENT"] == 1
    a.untagged_responses.clear()
    noop_until_exists(a, 2)
    assert untagged(a, "RECENT")[-1] == b"2"
    assert b"\\Recent" in flags(a, 2)
    assert search(a, "RECENT") == [b"1", b"2"]
    b.untagged_responses.clear()
    noop_until_exists(b, 2)
    assert untagged(b, "RECENT")[-1] == b"0"
    assert b"\\Recent" not in flags(b, 2)
    assert status(watcher)["RECENT"] == 0
    for c in (a, b, watcher):
        c.logout()

    # A new session: the claim ended with the session that held it.
    c = connect(imap)
    c.select("INBOX")
    assert untagged(c, "RECENT") == [b"0"]
    assert search(c, "RECENT") == []
    c.logout()


def test_imap4rev2_does_not_claim(imap):  
    watcher = connect(imap)
    deliver(imap, "for rev1")
    wait_messages(watcher, 1)
    c = connect(imap)
    typ, data = c._simple_command("ENABLE", "IMAP4rev2")
    assert typ == "OK", data
    typ, data = c.select("INBOX")
    assert typ == "OK", data
    assert "RECENT" not in c.untagged_responses, c.untagged_responses
    assert b"\\Recent" not in flags(c, 1)
    assert status(watcher)["RECENT"] == 1
    c.logout()
    # The rev1 session after it still gets the message as recent.
    d = connect(imap)
    d.select("INBOX")
    assert untagged(d, "RECENT") == [b"1"]
    d.logout()
    watcher.logout()


def test_idle_reports_recent(imap):  
    c = connect(imap)
    c.select("INBOX")
    tag = c._new_tag().decode()
    c.send(f"{tag} IDLE\r\n".encode())
    assert c.readline().startswith(b"+ ")
    deliver(imap, "while idle")
    lines = []
    deadline = time.monotonic() + 15 * SLOW
    while b"RECENT" not in b"".join(lines) and time.monotonic() < deadline:
        lines.append(c.readline())
    assert lines[:2] == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"], lines
    c.send(b"DONE\r\n")
    while not c.readline().startswith(tag.encode()):
        pass
    assert b"\\Recent" in flags(c, 1)
    c.logout()


def test_racing_selects_split_the_recent_messages(imap):
    """Two SELECTs sent at once: every message is recent for exactly one."""
    from test_imap import Raw, seed
    w = connect(imap)
    seed(w, 30)
    assert status(w)["RECENT"] == 30
    login = f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode()
    raws = [Raw(imap), Raw(imap)]
    for r in raws:
        r.send(login)
        r.until_tagged("l")
    for r in raws:
        r.send(b"s SELECT INBOX\r\n")
    counts = []
    for r in raws:
        out = r.until_tagged("s")
        assert out[-1].startswith(b"s OK"), out
        counts.append(int(next(re.match(rb"\* (\d+) RECENT", ln).group(1)
                               for ln in out if re.match(rb"\* \d+ RECENT", ln))))
    assert sum(counts) == 30, counts
    mine = []
    for r in raws:
        r.send(b"f FETCH 1:* (UID FLAGS)\r\n")
        out = r.until_tagged("f")
        mine.append({int(re.search(rb"UID (\d+)", ln).group(1))
                     for ln in out if b"FETCH" in ln and b"\\Recent" in ln})
    assert len(mine[0]) == counts[0] and len(mine[1]) == counts[1], (mine, counts)
    assert not (mine[0] & mine[1])
    assert mine[0] | mine[1] == set(range(1, 31))
    assert status(w)["RECENT"] == 0
    for r in raws:
        r.close()
    w.logout()
