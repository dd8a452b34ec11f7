"""The builtin matchers in a real ternd: mail sent over SMTP goes through a
root processor whose steps each route to a different mailbox folder when
their matcher (or an and/or/not of matchers) fires, and the message is read
back from the Maildir files under the state dir. Also: recipients split by
a recipient matcher, our own Received field counted by RelayLimit, the
directory's answer behind RecipientIsLocal/HostIsLocal, SMTP AUTH on the
submission listener behind SMTPAuthSuccessful/SMTPAuthUserIs, and bad
conditions refused by `ternd --check-config` with the step's path."""

import smtplib
import ssl
import subprocess
import uuid

import pytest

from conftest import TERNCTL, TERND, make_message
from test_pipeline import find_message, log_has, mailbox_files, send_mail, wait_for


def ctl(t, *args, stdin=None):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], input=stdin,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def deliver(folder):
    return [{"match": "All", "mailet": "LocalDelivery", "folder": folder,
             "fallback_to_inbox": "false"}]


def to(processor):
    return {"mailet": "ToProcessor", "processor": processor}


CHAIN = {
    "smtp": {"relay_networks": ["127.0.0.0/8"]},
    "processors": {
        "root": [
            {"match": "RelayLimit=3", **to("loops")},
            {"match": {"and": [r"SenderIsRegex=.*@spam\.test",
                               {"not": "RemoteAddrInNetwork=10.0.0.0/8"}]}, **to("junk")},
            {"match": "HasAttachment", **to("attach")},
            {"match": "HasHeader=X-Priority=^1+X-Mailer", **to("prio")},
            {"match": "RecipientIs=bob@example.test", **to("sent")},
            {"match": {"or": ["SizeGreaterThan=20k", "TooManyRecipients=3"]}, **to("big")},
            {"match": "RecipientIsLocal", **to("deliver")},
            {"match": "HostIsLocal", **to("unknown")},
            {"match": "All", **to("relay")},
        ],
        "loops": [{"match": "All", "mailet": "Null"}],
        "unknown": [{"match": "All", "mailet": "Null"}],
        "junk": deliver("Junk"),
        "attach": deliver("Archive"),
        "prio": deliver("Drafts"),
        "sent": deliver("Sent"),
        "big": deliver("Trash"),
        "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
        "relay": [{"match": "All", "mailet": "RemoteDelivery"}],
        "error": [{"match": "All", "mailet": "RemoteDelivery"}],
        "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
    },
}

USERS = ("alice", "bob", "carol", "dave", "erin")


def start(tern_factory):
    t = tern_factory(CHAIN, start=False)
    t.write_config()
    for u in USERS:
        ctl(t, "account", "add", f"{u}@example.test")
    t.start()
    return t


def msg(marker, headers=(), body=None, subject=None):
    return make_message(subject=subject or f"matchers {marker}", headers=headers,
                        body=body if body is not None else f"marker {marker}\r\n")


def where(t, account, marker):
    """The folders of account holding the marked message (waits for one)."""
    boxes = ("INBOX", "Junk", "Archive", "Drafts", "Sent", "Trash")

    def look():
        return [b for b in boxes
                if any(marker.encode() in f.read_bytes() for f in mailbox_files(t, account, b))]
    return wait_for(look)


def test_each_matcher_routes_to_its_folder(tern_factory):
    t = start(tern_factory)
    alice = "alice@example.test"
    cases = []

    def send(name, rcpts=(alice,), sender="s@example.org", **kw):
        marker = uuid.uuid4().hex
        r = send_mail(t, sender, list(rcpts), msg(marker, **kw))
        assert r.code == 250, (name, r)
        cases.append((name, marker, r.qid))
        return marker, r.qid

    plain, _ = send("plain")
    spam, _ = send("spam", sender="promo@SPAM.test")
    att, _ = send("attachment", headers=(
        "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="=_b"'),
        body="--=_b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
             "--=_b\r\nContent-Type: application/pdf\r\n"
             "Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nJVBERi0=\r\n--=_b--\r\n")
    inline, _ = send("alternative only", headers=(
        "MIME-Version: 1.0", "Content-Type: multipart/alternative; boundary=b"),
        body="--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
             "--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b--\r\n")
    prio, _ = send("priority", headers=("X-Priority: 1 (Highest)", "X-Mailer: test"))
    prio_half, _ = send("priority without mailer", headers=("X-Priority: 1",))
    big, _ = send("big", body="x" * 100 + "\r\n" + ("y" * 76 + "\r\n") * 300)

    assert where(t, alice, plain) == ["INBOX"]
    assert where(t, alice, spam) == ["Junk"]
    assert where(t, alice, att) == ["Archive"]
    assert where(t, alice, inline) == ["INBOX"]
    assert where(t, alice, prio) == ["Drafts"]
    assert where(t, alice, prio_half) == ["INBOX"]
    assert where(t, alice, big) == ["Trash"]

    # RecipientIs compares the local part as written: "BOB" is not "bob"
    # (nothing matches, so nothing is split).
    case, _ = send("case", rcpts=("alice@example.test", "BOB@Example.Test"))
    assert where(t, alice, case) == ["INBOX"]
    assert where(t, "bob@example.test", case) == ["INBOX"]

    # More than three recipients: TooManyRecipients=3 takes them all.
    many, _ = send("many", rcpts=("alice@example.test", "carol@example.test",
                                  "dave@example.test", "erin@example.test"))
    for u in ("alice", "carol", "dave", "erin"):
        assert where(t, f"{u}@example.test", many) == ["Trash"], u


def test_recipient_matcher_splits_the_mail(tern_factory):
    t = start(tern_factory)
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["alice@example.test", "bob@example.test",
                                       "carol@example.test"], msg(marker))
    assert r.code == 250, r
    assert where(t, "bob@example.test", marker) == ["Sent"]
    assert where(t, "alice@example.test", marker) == ["INBOX"]
    assert where(t, "carol@example.test", marker) == ["INBOX"]

    # Four recipients: bob leaves for Sent first, so TooManyRecipients=3
    # sees three and lets them through.
    marker = uuid.uuid4().hex
    rcpts = [f"{u}@example.test" for u in USERS if u != "erin"]
    r = send_mail(t, "s@example.org", rcpts, msg(marker))
    assert r.code == 250, r
    assert where(t, "bob@example.test", marker) == ["Sent"]
    for u in ("alice", "carol", "dave"):
        assert where(t, f"{u}@example.test", marker) == ["INBOX"], u



def test_relay_limit_counts_our_received_field(tern_factory):
    t = start(tern_factory)
    alice = "alice@example.test"
    # Two hops before us plus our own Received: 3, the limit.
    looped = uuid.uuid4().hex
    r1 = send_mail(t, "s@example.org", [alice], msg(looped, headers=(
        "Received: from a.test by b.test; Mon, 01 Jan 2024 00:00:00 +0000",
        "received: from c.test by a.test; Mon, 01 Jan 2024 00:00:00 +0000")))
    assert r1.code == 250
    # One hop before us: 2, delivered.
    fine = uuid.uuid4().hex
    r2 = send_mail(t, "s@example.org", [alice], msg(fine, headers=(
        "Received: from a.test by b.test; Mon, 01 Jan 2024 00:00:00 +0000",
        "X-Received: not a Received field")))
    assert r2.code == 250
    assert where(t, alice, fine) == ["INBOX"]
    assert wait_for(lambda: log_has(t, rf"qid={r1.qid} .*mailet=Null"))
    assert not [b for b in ("INBOX", "Junk", "Archive", "Drafts", "Sent", "Trash")
                if any(looped.encode() in f.read_bytes() for f in mailbox_files(t, alice, b))]


def routed(t, qid, step, processor):
    """The step log line: root step `step` sent the mail to `processor`."""
    return wait_for(lambda: log_has(
        t, rf"event=step qid={qid} .*step=processors\.root\[{step}\] mailet=ToProcessor "
           rf"rcpts=1 verdict=goto to={processor}"))


def test_directory_matchers(tern_factory):
    t = start(tern_factory)
    # An account: RecipientIsLocal (step 6).
    r = send_mail(t, "s@example.org", ["dave@example.test"], msg(uuid.uuid4().hex))
    assert r.code == 250, r
    assert routed(t, r.qid, 6, "deliver")
    # An alias is local too.
    ctl(t, "alias", "add", "team@example.test", "carol@example.test")
    r = send_mail(t, "s@example.org", ["team@example.test"], msg(uuid.uuid4().hex))
    assert r.code == 250, r
    assert routed(t, r.qid, 6, "deliver")
    # An unknown user of our domain: HostIsLocal (step 7), not RecipientIsLocal.
    r = send_mail(t, "s@example.org", ["nobody@example.test"], msg(uuid.uuid4().hex))
    assert r.code == 250, r
    assert routed(t, r.qid, 7, "unknown")
    assert wait_for(lambda: log_has(t, rf"qid={r.qid} .*mailet=Null"))
    assert not log_has(t, rf"qid={r.qid} .*to=deliver")
    # A foreign domain: neither, so the last step relays it.
    r = send_mail(t, "s@example.org", ["someone@elsewhere.test"], msg(uuid.uuid4().hex))
    assert r.code == 250, r
    assert routed(t, r.qid, 8, "relay")
    assert wait_for(lambda: log_has(t, rf"event=rcpt_remote qid={r.qid}"))


def check(t, processors):
    t.config["processors"] = processors
    t.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t.conf_path)], capture_output=True,
                       timeout=60)
    return p.returncode, p.stderr.decode()


def test_bad_conditions_refused_with_their_path(tern_factory):
    t = tern_factory(CHAIN, start=False)
    base = {k: v for k, v in CHAIN["processors"].items() if k != "root"}
    cases = [
        ({"and": ["All", {"not": "RecipientIsRegex=(x"}]},
         'processors.root[0]: line', 'RecipientIsRegex: invalid regex "(x": missing closing '
         'parenthesis at offset 2'),
        ("RemoteAddrInNetwork=10.0.0.0/8, nowhere", 'processors.root[0]: line',
         'RemoteAddrInNetwork: "nowhere" is not a network'),
        ("SizeGreaterThan=10q", 'processors.root[0]: line',
         'SizeGreaterThan: "10q" is not a size'),
        ("HasHeader=Subject=^a+b$", 'processors.root[0]: line',
         'HasHeader: "b$" is not a header field name'),
        ("HostIsLocal=example.test", 'processors.root[0]: line',
         'HostIsLocal: takes no condition'),
        ("RelayLimit", 'processors.root[0]: line', 'RelayLimit: needs a condition'),
    ]
    for match, where_, what in cases:
        rc, err = check(t, {**base, "root": [{"match": match, **to("deliver")}]})
        assert rc != 0, (match, err)
        assert where_ in err and what in err, (match, err)
    rc, err = check(t, CHAIN["processors"])
    assert rc == 0, err


def test_smtp_auth_matchers(tern_factory):
    chain = {
        "auth": {"failure_delay": "200ms", "max_delay": "1s"},
        "processors": {
            "root": [
                {"match": "SMTPAuthUserIs=someone@example.test, alice@EXAMPLE.test",
                 **to("sent")},
                {"match": {"and": ["SMTPAuthSuccessful", "SenderIsLocal"]}, **to("prio")},
                {"match": "All", **to("deliver")},
            ],
            "sent": deliver("Sent"),
            "prio": deliver("Drafts"),
            "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
            "error": [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
    }
    t = tern_factory(chain, start=False)
    t.write_config()
    for u in ("alice", "bob"):
        ctl(t, "account", "add", f"{u}@example.test", "--password-stdin",
            stdin=f"pw of {u}\n".encode())
    ctl(t, "account", "add", "carol@example.test")
    t.start()
    carol = "carol@example.test"

    def submit(user, marker):
        s = smtplib.SMTP("127.0.0.1", t.port("submission"), timeout=20)
        try:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo()
            s.login(f"{user}@example.test", f"pw of {user}")
            assert s.sendmail(f"{user}@example.test", [carol], msg(marker)) == {}
        finally:
            s.quit()

    m_alice, m_bob, m_anon = (uuid.uuid4().hex for _ in range(3))
    submit("alice", m_alice)
    submit("bob", m_bob)
    # Anonymous, on the MX, claiming one of our domains.
    assert send_mail(t, "alice@example.test", [carol], msg(m_anon)).code == 250
    assert where(t, carol, m_alice) == ["Sent"]
    assert where(t, carol, m_bob) == ["Drafts"]
    assert where(t, carol, m_anon) == ["INBOX"]


def test_shipped_chain_uses_the_directory_matchers(tern_factory):
    # No processors: key, so ternd runs its shipped chain, whose transport
    # processor tells local users (RecipientIsLocal), unknown users of our
    # domains (HostIsLocal: bounced with 5.1.1) and the rest (relayed).
    t = tern_factory({"smtp": {"relay_networks": ["127.0.0.0/8"]}}, start=False)
    del t.config["processors"]
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["alice@example.test"], msg(marker))
    assert r.code == 250, r
    assert where(t, "alice@example.test", marker) == ["INBOX"]
    assert log_has(t, rf"event=step qid={r.qid} .*step=processors\.transport\[\d\] "
                      r"mailet=ToProcessor rcpts=1 verdict=goto to=local-delivery")
    r = send_mail(t, "s@example.org", ["nobody@example.test"], msg(uuid.uuid4().hex))
    assert r.code == 250, r
    assert wait_for(lambda: log_has(
        t, rf"event=step qid={r.qid} .*mailet=ToProcessor rcpts=1 verdict=goto to=bounces"))
    assert wait_for(lambda: log_has(t, rf"qid={r.qid} .*mailet=DSNBounce .*status=5\.1\.1"))
    r = send_mail(t, "s@example.org", ["someone@elsewhere.test"], msg(uuid.uuid4().hex))
    assert r.code == 250, r
    assert wait_for(lambda: log_has(
        t, rf"event=step qid={r.qid} .*mailet=ToProcessor rcpts=1 verdict=goto to=relay"))
