"""Routing mailets in a real ternd: an alias fanning out (a chain of
aliases resolved round by round, duplicates delivered once), an alias loop
bounced with 5.4.6, a bounce of an unknown local recipient arriving in the
sender's mailbox as an RFC 3464 multipart/report, no bounce of a bounce,
and ToRepository with ternctl repository list/show/release/delete.
Everything is read back from the Maildir files, the log and ternctl."""

import email
import email.policy
import subprocess
import uuid

from conftest import TERNCTL
from test_pipeline import ctl, find_message, log_has, mailbox_files, marked_message, send_mail, \
    spool_count, wait_for

KEEP = [{"match": "All", "mailet": "RemoteDelivery"}]

ROUTING = {
    "processors": {
        "root": [{"match": "All", "mailet": "ToProcessor", "processor": "transport"}],
        "transport": [
            {"match": "All", "mailet": "PostmasterAlias"},
            {"match": "All", "mailet": "RecipientRewrite"},
            # Not an account (unknown here): the step fails to `unknown`.
            {"match": "All", "mailet": "LocalDelivery", "on_error": "unknown"},
        ],
        "unknown": [{"match": "All", "mailet": "ToProcessor", "processor": "bounces",
                     "notice": "5.1.1 no such mailbox here"}],
        "error": KEEP,
        "bounces": [{"match": "All", "mailet": "DSNBounce", "on_error": "retry"}],
    }
}


def start(tern_factory, accounts, aliases=(), over=ROUTING):
    t = tern_factory(over, start=False)
    t.write_config()
    for a in accounts:
        ctl(t, "account", "add", a)
    for addr, *targets in aliases:
        ctl(t, "alias", "add", addr, *targets)
    t.start()
    return t


def parse(path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)


def test_alias_chain_fans_out_once_per_account(tern_factory):
    t = start(tern_factory,
              ["alice@example.test", "bob@example.test", "carol@example.test"],
              [("team@example.test", "alice@example.test", "bob@example.test"),
               # all -> team (an alias: the next round), carol, and alice again
               ("all@example.test", "team@example.test", "carol@example.test",
                "alice@example.test")])
    # Once through the chain (team only reached at the second round), once
    # with team named directly too (de-duplicated in the first round).
    for rcpts in (["all@example.test"], ["all@example.test", "team@example.test"]):
        marker = uuid.uuid4().hex
        r = send_mail(t, "s@example.org", rcpts, marked_message(marker))
        assert r.code == 250, r
        for who in ("alice", "bob", "carol"):
            files = find_message(t, f"{who}@example.test", marker)
            assert len(files) == 1, (rcpts, who, files)
            assert f"Delivered-To: {who}@example.test".encode() in files[0].read_bytes()
        # Every original recipient done: nothing left in the spool.
        assert wait_for(lambda: spool_count(t) == 0), spool_count(t)
        # No second copy shows up later.
        for who in ("alice", "bob", "carol"):
            assert len([f for f in mailbox_files(t, f"{who}@example.test")
                        if marker.encode() in f.read_bytes()]) == 1
    assert log_has(t, r"expanded all@example.test to 2 new recipient\(s\) of 3")
    assert log_has(t, r"expanded team@example.test to 1 new recipient\(s\) of 2")
    assert not log_has(t, r"alias loop")


def test_alias_loop_is_bounced_with_5_4_6(tern_factory):
    t = start(tern_factory, ["alice@example.test"],
              [("loop1@example.test", "loop2@example.test"),
               ("loop2@example.test", "loop1@example.test")])
    marker = uuid.uuid4().hex
    r = send_mail(t, "alice@example.test", ["loop1@example.test"], marked_message(marker))
    assert r.code == 250, r
    files = find_message(t, "alice@example.test", marker)
    assert files, mailbox_files(t, "alice@example.test")
    report = files[0].read_bytes()
    assert b"report-type=delivery-status" in report
    assert b"Status: 5.4.6" in report
    assert log_has(t, r"alias loop: loop2@example.test -> loop1@example.test")
    assert wait_for(lambda: spool_count(t) == 0), spool_count(t)


def test_unknown_local_recipient_bounces_as_multipart_report(tern_factory):
    # (Without the recipient matchers in this chain, LocalDelivery fails
    # a mail that has any non-account recipient: one recipient here.)
    t = start(tern_factory, ["alice@example.test"])
    marker = uuid.uuid4().hex
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.test> RET=HDRS ENVID=env-" + marker[:8]).code == 250
    assert c.cmd("RCPT TO:<nobody@example.test> ORCPT=rfc822;Nobody@example.test").code == 250
    r = c.data(marked_message(marker))
    c.cmd("QUIT")
    assert r.code == 250, r
    # The bounce: from the null sender, into alice's INBOX.
    files = wait_for(lambda: [f for f in mailbox_files(t, "alice@example.test")
                              if b"multipart/report" in f.read_bytes()])
    assert len(files) == 1, mailbox_files(t, "alice@example.test")
    raw = files[0].read_bytes()
    assert raw.startswith(b"Return-Path: <>\r\n"), raw[:100]
    msg = parse(files[0])
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "MAILER-DAEMON@mail.example.test" in msg["From"]
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "no such mailbox here" in parts[0].get_payload(decode=True).decode()
    ds = parts[1].as_string()
    assert "Reporting-MTA: dns; mail.example.test" in ds
    assert f"Original-Envelope-Id: env-{marker[:8]}" in ds
    assert "Final-Recipient: rfc822; nobody@example.test" in ds
    assert "Original-Recipient: rfc822; Nobody@example.test" in ds
    assert "Action: failed" in ds and "Status: 5.1.1" in ds
    assert "Diagnostic-Code: smtp; 550 no such mailbox here" in ds
    # RET=HDRS: the original's header section, not its body.
    orig = parts[2].get_payload()
    assert f"Subject: test {marker}" in orig
    assert f"marker {marker}" not in orig
    assert wait_for(lambda: spool_count(t) == 0), spool_count(t)


def test_bounce_of_a_bounce_is_dropped_and_notify_never(tern_factory):
    t = start(tern_factory, ["alice@example.test"])
    m1, m2 = uuid.uuid4().hex, uuid.uuid4().hex
    # The sender is unknown here too: its bounce fails and is not bounced.
    r = send_mail(t, "ghost@example.test", ["nobody@example.test"], marked_message(m1))
    assert r.code == 250
    assert wait_for(lambda: log_has(t, r"no bounce: the sender is the null sender"))
    # NOTIFY=NEVER: no report at all.
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    assert c.cmd("RCPT TO:<nobody2@example.test> NOTIFY=NEVER").code == 250
    r2 = c.data(marked_message(m2))
    c.cmd("QUIT")
    assert r2.code == 250
    assert wait_for(lambda: log_has(t, r"no bounce: NOTIFY excludes FAILURE"))
    assert wait_for(lambda: spool_count(t) == 0), spool_count(t)
    assert not [f for f in mailbox_files(t, "alice@example.test")
                if b"multipart/report" in f.read_bytes()]


def repo(t, *args, check=True):
    p = subprocess.run([str(TERNCTL), "-d", str(t.state_dir), "repository", *args],
                       capture_output=True, timeout=60)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def test_to_repository_and_ternctl(tern_factory):
    over = {"processors": {
        "root": [{"match": "All", "mailet": "ToRepository", "repository": "held"}],
        "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
        "error": KEEP,
        "bounces": KEEP,
    }}
    t = start(tern_factory, ["alice@example.test"], over=over)
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["alice@example.test"], marked_message(marker))
    assert r.code == 250
    assert wait_for(lambda: repo(t, "list", "held").stdout.strip())
    out = repo(t, "list", "held").stdout.decode()
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    mid = lines[0].split()[0]
    assert f"qid={r.qid}" in lines[0] and "from=<s@example.org>" in lines[0] \
        and "rcpts=1" in lines[0], lines[0]
    # Kept in the repository, so finished in the spool; nothing delivered.
    assert wait_for(lambda: spool_count(t) == 0)
    assert not mailbox_files(t, "alice@example.test")
    shown = repo(t, "show", "held", mid).stdout
    assert b"recipients: alice@example.test" in shown
    assert f"marker {marker}".encode() in shown
    path = t.state_dir / "repositories" / "held" / mid
    assert path.is_file() and path.read_bytes().split(b"\n", 1)[0].startswith(b"{")
    # Bad input is refused without touching anything.
    assert repo(t, "show", "held", "../../x", check=False).returncode == 2
    assert repo(t, "list", "../etc", check=False).returncode == 2
    assert repo(t, "release", "held", mid, "--processor", "a/b", check=False).returncode == 2
    # Release: moved to release/ under the processor's name.
    repo(t, "release", "held", mid, "--processor", "deliver")
    assert not path.exists()
    assert (t.state_dir / "repositories" / "held" / "release" / f"{mid}@deliver").is_file()
    # ternd picks it up (every 2 s) and runs it from `deliver`.
    assert wait_for(lambda: [f for f in mailbox_files(t, "alice@example.test")
                             if marker.encode() in f.read_bytes()])
    assert not (t.state_dir / "repositories" / "held" / "release" / f"{mid}@deliver").exists()
    # A second mail, deleted.
    r2 = send_mail(t, "s@example.org", ["alice@example.test"], marked_message(marker + "2"))
    assert r2.code == 250
    assert wait_for(lambda: f"qid={r2.qid}" in repo(t, "list", "held").stdout.decode())
    mid2 = [ln.split()[0] for ln in repo(t, "list", "held").stdout.decode().splitlines()
            if f"qid={r2.qid}" in ln][0]
    repo(t, "delete", "held", mid2)
    assert f"qid={r2.qid}" not in repo(t, "list", "held").stdout.decode()
    assert repo(t, "delete", "held", mid2, check=False).returncode == 1


def chain(root, bounces=None):
    """ROUTING with another root (and bounces) processor."""
    procs = dict(ROUTING["processors"])
    procs["root"] = root
    if bounces:
        procs["bounces"] = bounces
    return {"processors": procs}


TO_TRANSPORT = {"match": "All", "mailet": "ToProcessor", "processor": "transport"}


def test_postmaster_alias_and_forward(tern_factory):
    over = chain([
        {"match": "All", "mailet": "PostmasterAlias", "postmaster": "alice@example.test"},
        TO_TRANSPORT])
    t = start(tern_factory, ["alice@example.test"], over=over)
    marker = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["PostMaster@example.test"],
                     marked_message(marker)).code == 250
    files = find_message(t, "alice@example.test", marker)
    assert len(files) == 1
    assert log_has(t, r"postmaster: PostMaster@example.test -> alice@example.test")

    over = chain([{"match": "All", "mailet": "Forward", "forward_to": ["bob@example.test"],
                   "processor": "transport"}])
    t2 = start(tern_factory, ["alice@example.test", "bob@example.test"], over=over)
    assert send_mail(t2, "s@example.org", ["alice@example.test"],
                     marked_message(marker)).code == 250
    files = find_message(t2, "bob@example.test", marker)
    assert len(files) == 1
    assert files[0].read_bytes().startswith(b"Return-Path: <s@example.org>\r\n")
    assert not mailbox_files(t2, "alice@example.test")
    assert wait_for(lambda: spool_count(t2) == 0)


def test_redirect_new_mail_and_pass_through(tern_factory):
    over = chain([{"match": "All", "mailet": "Redirect", "recipients": ["bob@example.test"],
                   "subject_prefix": "[redir]", "sender": "owner@example.test"}])
    t = start(tern_factory, ["alice@example.test", "bob@example.test"], over=over)
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["alice@example.test"], marked_message(marker))
    assert r.code == 250
    files = find_message(t, "bob@example.test", marker)
    assert len(files) == 1
    msg = parse(files[0])
    assert msg["Subject"] == f"[redir] test {marker}"
    assert msg["X-Tern-Loop"] == "mail.example.test"
    assert msg["Return-Path"] == "<owner@example.test>"
    assert not mailbox_files(t, "alice@example.test")  # passThrough false: the original ends
    assert wait_for(lambda: spool_count(t) == 0)
    assert log_has(t, r"event=spawned qid=\S+ parent=" + r.qid)

    over = chain([{"match": "All", "mailet": "Redirect", "recipients": "bob@example.test",
                   "inline": "headers", "passThrough": True}, TO_TRANSPORT])
    t2 = start(tern_factory, ["alice@example.test", "bob@example.test"], over=over)
    r = send_mail(t2, "s@example.org", ["alice@example.test"], marked_message(marker))
    assert r.code == 250
    assert len(find_message(t2, "alice@example.test", marker)) == 1  # the original too
    files = find_message(t2, "bob@example.test", marker)
    assert len(files) == 1
    msg = parse(files[0])
    assert msg.get_content_type() == "text/plain"
    body = msg.get_payload()
    assert f"Subject: test {marker}" in body and f"marker {marker}" not in body


def test_notify_postmaster_and_plain_bounce(tern_factory):
    over = chain([{"match": "All", "mailet": "NotifyPostmaster", "to": "bob@example.test",
                   "notice": "Look at this one."}, TO_TRANSPORT],
                 bounces=[{"match": "All", "mailet": "Bounce"}])
    t = start(tern_factory, ["alice@example.test", "bob@example.test"], over=over)
    marker = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["alice@example.test"],
                     marked_message(marker)).code == 250
    assert len(find_message(t, "alice@example.test", marker)) == 1
    files = find_message(t, "bob@example.test", marker)
    assert len(files) == 1
    msg = parse(files[0])
    assert msg["X-Tern-Notice"] == "postmaster-notice"
    assert msg.get_content_type() == "multipart/mixed"
    parts = msg.get_payload()
    assert "Look at this one." in parts[0].get_payload(decode=True).decode()
    assert parts[1].get_content_type() == "message/rfc822"
    assert f"marker {marker}" in parts[1].as_string()

    # The plain Bounce of an unknown recipient (the notice about it goes
    # to bob as well, and is itself not reported again).
    m2 = uuid.uuid4().hex
    assert send_mail(t, "alice@example.test", ["nobody@example.test"],
                     marked_message(m2)).code == 250
    bounced = wait_for(lambda: [f for f in mailbox_files(t, "alice@example.test")
                                if b"X-Tern-Notice: bounce" in f.read_bytes()])
    assert len(bounced) == 1
    msg = parse(bounced[0])
    assert msg.get_content_type() == "multipart/mixed"
    parts = msg.get_payload()
    assert "<nobody@example.test>: no such mailbox here" in \
        parts[0].get_payload(decode=True).decode()
    assert f"marker {m2}" in parts[1].as_string()
    assert wait_for(lambda: spool_count(t) == 0), spool_count(t)
