"""The mailet pipeline in a real ternd: mail sent over SMTP goes through the
configured processors and ends up in the store (read back as Maildir files
under local.path), rejects from the root processor reach the SMTP client,
plugins built out of tree are loaded (and refused when broken), a SIGHUP
swaps the chain, and mail left in the spool is processed at the next start
without repeating finished recipients."""

import subprocess
import time
import uuid
from pathlib import Path

import re

from conftest import ROOT, TERNCTL, TERND, make_message, send_mail as _send_mail, merge

HERE = Path(__file__).resolve().parent


def ctl(t, *args, check=True):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=60)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def mailbox_files(t, account, box="INBOX"):
    """Message files of a mailbox in the local store (Maildir++ layout)."""
    local, domain = account.split("@")
    files = []
    for f in (t.state_dir / "mail").rglob("*"):
        if f.is_file() and ("/new/" in str(f) or "/cur/" in str(f)):
            files.append(f)
    return [f for f in files if f"/{domain}/" in str(f) and f"/{local}/" in str(f)
            and (box == "INBOX" and "/." not in str(f.relative_to(t.state_dir / "mail"))
                 or box != "INBOX" and f"/.{box}/" in str(f))]


def wait_for(pred, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def find_message(t, account, marker, box="INBOX"):
    def look():
        return [f for f in mailbox_files(t, account, box) if marker.encode() in f.read_bytes()]
    return wait_for(look)


def send_mail(t, mail_from, rcpts, message):
    c = t.connect()
    try:
        return _send_mail(c, mail_from, rcpts, message)
    finally:
        c.cmd("QUIT")


def log_has(t, pattern):
    return re.search(pattern, t.log(0)) is not None


def spool_count(t):
    p = subprocess.run([str(TERNCTL), "spool", "count", "-d", str(t.state_dir)],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[0])


LOCAL_ONLY = {
    "processors": {
        "root": [{"match": "All", "mailet": "ToProcessor", "processor": "deliver"}],
        "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
        "error": [{"match": "All", "mailet": "RemoteDelivery"}],
        "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
    }
}


def marked_message(marker, subject=None):
    return make_message(subject=subject or f"test {marker}", body=f"marker {marker}\r\n")


def test_local_delivery_adds_trace_fields_and_finishes(tern_factory):
    t = tern_factory(LOCAL_ONLY, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    ctl(t, "account", "add", "bob@example.test")
    t.start()
    marker = uuid.uuid4().hex
    r = send_mail(t, "sender@example.org", ["alice@example.test", "bob@example.test"],
                  marked_message(marker))
    assert r.code == 250, r
    for who in ("alice", "bob"):
        files = find_message(t, f"{who}@example.test", marker)
        assert len(files) == 1, (who, mailbox_files(t, f"{who}@example.test"))
        data = files[0].read_bytes()
        top = data.split(b"\r\n\r\n")[0]
        assert top.startswith(b"Return-Path: <sender@example.org>\r\nDelivered-To: "
                              + f"{who}@example.test".encode()), top[:200]
        assert f"queued as {r.qid}".encode() not in data
        assert r.qid.encode() in top  # our Received header names the queue id
    # Every recipient done: the spool entry completes.
    assert wait_for(lambda: spool_count(t) == 0), spool_count(t)
    assert log_has(t, f"event=rcpt_done qid={r.qid}")


def test_folder_parameter_and_missing_folder_falls_back(tern_factory):
    over = {"processors": dict(LOCAL_ONLY["processors"])}
    over["processors"]["deliver"] = [
        {"match": "All", "mailet": "LocalDelivery", "folder": "Archive"}]
    t = tern_factory(over, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    marker = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["alice@example.test"], marked_message(marker)).code == 250
    assert find_message(t, "alice@example.test", marker, box="Archive")


def test_unknown_account_goes_to_error_processor_not_lost(tern_factory):
    t = tern_factory(LOCAL_ONLY)
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["nobody@example.test"], marked_message(marker))
    assert r.code == 250
    # LocalDelivery cannot deliver to a non-account: the step fails, the
    # mail moves to `error`, which here hands it to the remote queue (as
    # stored: the chain changed nothing, so the entry itself stays).
    assert wait_for(lambda: log_has(t, f"event=rcpt_remote qid={r.qid} .*rcpt=nobody@example.test"))
    assert log_has(t, rf"qid={r.qid} .*mailet=LocalDelivery .*verdict=error")
    assert wait_for(lambda: spool_count(t) == 1)


def build_plugin(tmp, name):
    out = tmp / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                    "-I", str(ROOT / "mailets"), "-o", str(out),
                    str(ROOT / "mailets" / "examples" / f"{name}.c")],
                   check=True, capture_output=True, timeout=120)
    return out


def plugin_config(tmp, action="tag"):
    tagger = build_plugin(tmp, "subject_tagger")
    sender = build_plugin(tmp, "sender_domain")
    step = {"match": "SenderDomainIn=example.org, example.net", "mailet": "SubjectTagger",
            "pattern": r"\[ad\]", "header": "X-Tagged", "value": "advert", "action": action}
    return {
        "plugins": [{"name": "SubjectTagger", "path": str(tagger)},
                    {"name": "SenderDomainIn", "path": str(sender)}],
        "processors": {
            "root": [step, {"match": "All", "mailet": "ToProcessor", "processor": "deliver"}],
            "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
            "error": [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
    }


def test_plugins_built_out_of_tree_run(tern_factory, tmp_path):
    t = tern_factory(plugin_config(tmp_path), start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    m1, m2, m3 = (uuid.uuid4().hex for _ in range(3))
    assert send_mail(t, "x@example.org", ["alice@example.test"],
                     marked_message(m1, subject=f"[AD] buy {m1}")).code == 250
    assert send_mail(t, "x@other.test", ["alice@example.test"],
                     marked_message(m2, subject=f"[ad] buy {m2}")).code == 250
    assert send_mail(t, "x@example.net", ["alice@example.test"],
                     marked_message(m3, subject=f"hello {m3}")).code == 250
    f1 = find_message(t, "alice@example.test", m1)
    f2 = find_message(t, "alice@example.test", m2)
    f3 = find_message(t, "alice@example.test", m3)
    assert f1 and f2 and f3
    assert b"X-Tagged: advert\r\n" in f1[0].read_bytes()
    assert b"X-Tagged" not in f2[0].read_bytes()   # matcher: sender domain not listed
    assert b"X-Tagged" not in f3[0].read_bytes()   # mailet: subject does not match


def test_root_reject_reaches_the_smtp_client(tern_factory, tmp_path):
    t = tern_factory(plugin_config(tmp_path, action="reject"), start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    marker = uuid.uuid4().hex
    r = send_mail(t, "x@example.org", ["alice@example.test"],
                  marked_message(marker, subject="[ad] spam"))
    assert r.code == 550 and r.enhanced == "5.7.1", r
    # Refused: nothing delivered, nothing left in the spool.
    time.sleep(0.5)
    assert not mailbox_files(t, "alice@example.test")
    assert wait_for(lambda: spool_count(t) == 0)
    # The session goes on: the next message is accepted.
    r2 = send_mail(t, "x@example.org", ["alice@example.test"], marked_message(marker))
    assert r2.code == 250


def test_broken_plugins_are_refused_at_validation(tern_factory, tmp_path):
    cfg = plugin_config(tmp_path)
    cfg["processors"]["root"][0]["pattern"] = "("       # init fails: bad regex
    t = tern_factory(cfg, start=False)
    t.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t.conf_path)], capture_output=True,
                       timeout=60)
    assert p.returncode != 0
    assert b"SubjectTagger" in p.stderr and b"pattern" in p.stderr, p.stderr

    cfg = plugin_config(tmp_path)
    cfg["plugins"].append({"name": "SubjectTagger", "path": cfg["plugins"][0]["path"]})
    t2 = tern_factory(cfg, start=False)
    t2.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t2.conf_path)], capture_output=True,
                       timeout=60)
    assert p.returncode != 0 and b"listed twice" in p.stderr, p.stderr

    cfg = plugin_config(tmp_path)
    cfg["plugins"][0]["path"] = str(tmp_path / "missing.so")
    t3 = tern_factory(cfg, start=False)
    t3.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t3.conf_path)], capture_output=True,
                       timeout=60)
    assert p.returncode != 0 and b"cannot load" in p.stderr, p.stderr


def check_config(t, cfg):
    t.config = merge(t.config, cfg)
    t.write_config()
    p = subprocess.run([str(TERND), "--check-config", str(t.conf_path)], capture_output=True,
                       timeout=60)
    return p.returncode, p.stderr.decode()


def test_unknown_mailet_and_processor_refused(tern_factory):
    t = tern_factory({}, start=False)
    # The shape first (conf/), then the modules (the engine).
    rc, err = check_config(t, {"processors": {
        "root": [{"match": "All", "mailet": "ToProcessor", "processor": "nowhere"}]}})
    assert rc != 0 and 'processor "nowhere" is not a processor' in err, err
    rc, err = check_config(t, {"processors": {
        "root": [{"match": "Al", "mailet": "ToProcessor", "processor": "error"},
                 {"match": {"not": "All"}, "mailet": "LocalDelivry"},
                 {"match": "All", "mailet": "ToProcessor", "processor": "error", "colour": "red"}]}})
    assert rc != 0
    assert 'processors.root[0]: line' in err and 'unknown matcher "Al"' in err, err
    assert 'unknown mailet "LocalDelivry"' in err, err
    assert 'unknown parameter "colour"' in err, err
    rc, err = check_config(t, {"processors": {"root": [{"match": "All", "mailet": "Null"}]}})
    assert rc == 0, err


def test_replay_after_stop_skips_finished_recipients(tern_factory):
    # alice exists, bob not yet: alice is delivered (and recorded finished),
    # bob's delivery fails and waits for a retry. ternd stops meanwhile; bob
    # is created; at the next start the replay delivers to bob only.
    over = {"mailets": {"retry_min": "10m"},
            "processors": dict(LOCAL_ONLY["processors"])}
    over["processors"]["deliver"] = [
        {"match": "All", "mailet": "LocalDelivery", "on_error": "retry"}]
    t = tern_factory(over, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["alice@example.test", "bob@example.test"],
                  marked_message(marker))
    assert r.code == 250
    assert find_message(t, "alice@example.test", marker)
    assert wait_for(lambda: log_has(t, f"event=retry_later qid={r.qid}"))
    t.stop()
    assert spool_count(t) == 1
    ctl(t, "account", "add", "bob@example.test")
    t.start()
    assert find_message(t, "bob@example.test", marker)
    assert wait_for(lambda: spool_count(t) == 0)
    time.sleep(0.3)
    alice = [f for f in mailbox_files(t, "alice@example.test") if marker.encode() in f.read_bytes()]
    assert len(alice) == 1, alice


def test_remote_delivery_keeps_the_final_message_for_the_queue(tern_factory, tmp_path):
    cfg = plugin_config(tmp_path)
    cfg["processors"]["root"][1] = {"match": "All", "mailet": "RemoteDelivery"}
    t = tern_factory(cfg)
    marker = uuid.uuid4().hex
    r = send_mail(t, "x@example.org", ["someone@example.test"],
                  marked_message(marker, subject=f"[ad] {marker}"))
    assert r.code == 250
    line = wait_for(lambda: re.search(rf"event=queued_remote qid=(\S+) parent={r.qid}", t.log(0)))
    assert line
    qid = line.group(1)
    assert wait_for(lambda: spool_count(t) == 1)
    p = subprocess.run([str(TERNCTL), "spool", "show", qid, "-d", str(t.state_dir)],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert b"X-Tagged: advert" in p.stdout      # what the chain changed is kept
    assert b"@queue" in p.stdout
    # A restart does not run the chain on it again.
    t.stop()
    t.start()
    assert wait_for(lambda: log_has(t, r"event=replay_started messages=0 remote_queue=1"))


def test_sighup_swaps_the_chain_for_new_mail(tern_factory):
    t = tern_factory(LOCAL_ONLY, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    m1 = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["alice@example.test"], marked_message(m1)).code == 250
    assert find_message(t, "alice@example.test", m1)
    over = {"processors": dict(LOCAL_ONLY["processors"])}
    over["processors"]["deliver"] = [
        {"match": "All", "mailet": "LocalDelivery", "folder": "Junk"}]
    t.reload(overrides=over)
    m2 = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["alice@example.test"], marked_message(m2)).code == 250
    assert find_message(t, "alice@example.test", m2, box="Junk")


def build_faulty(tmp, fault):
    out = tmp / f"faulty{fault}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-DFAULT={fault}",
                    "-I", str(ROOT / "mailets"), "-o", str(out), str(HERE / "plugins" / "faulty.c")],
                   check=True, capture_output=True, timeout=120)
    return out


def faulty_config(path):
    return {
        "plugins": [{"name": "Faulty", "path": str(path)}],
        "processors": {
            "root": [{"match": "All", "mailet": "ToProcessor", "processor": "work"}],
            "work": [{"match": "All", "mailet": "Faulty"},
                     {"match": "All", "mailet": "LocalDelivery"}],
            "error": [{"match": "All", "mailet": "LocalDelivery", "folder": "Archive"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        },
    }


def test_plugin_returning_garbage_sends_mail_to_error(tern_factory, tmp_path):
    t = tern_factory(faulty_config(build_faulty(tmp_path, 1)), start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    marker = uuid.uuid4().hex
    r = send_mail(t, "s@example.org", ["alice@example.test"], marked_message(marker))
    assert r.code == 250
    # Isolated: the mail went to `error`, which here files it in Archive.
    files = find_message(t, "alice@example.test", marker, box="Archive")
    assert files, t.log_tail()
    assert log_has(t, rf"qid={r.qid} .*mailet=Faulty .*verdict=error")
    assert not [f for f in mailbox_files(t, "alice@example.test") if marker.encode() in f.read_bytes()]


def test_plugin_wrong_abi_or_failing_init_refused(tern_factory, tmp_path):
    for fault, needle in ((2, "built for mailet ABI 2, this ternd speaks 1"),
                          (3, "refusing to start on purpose")):
        t = tern_factory(faulty_config(build_faulty(tmp_path, fault)), start=False)
        rc, err = check_config(t, {})
        assert rc != 0 and needle in err, err
        # ternd refuses to start the same way.
        p = subprocess.run([str(TERND), "-c", str(t.conf_path)], capture_output=True, timeout=60)
        assert p.returncode != 0 and needle.encode() in p.stderr, p.stderr


def test_sighup_loads_a_new_version_of_a_plugin(tern_factory, tmp_path):
    src = (ROOT / "mailets" / "examples" / "subject_tagger.c").read_text()
    so = tmp_path / "tagger.so"

    def build(version):
        c = tmp_path / "tagger.c"
        c.write_text(src.replace('"X-Subject-Tag"', f'"X-Version-{version}"'))
        tmpso = tmp_path / "tagger.so.new"
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-I", str(ROOT / "mailets"), "-o",
                        str(tmpso), str(c)], check=True, capture_output=True, timeout=120)
        tmpso.rename(so)    # replaced the way a package upgrade does

    build(1)
    cfg = {"plugins": [{"name": "SubjectTagger", "path": str(so)}],
           "processors": {
               "root": [{"match": "All", "mailet": "SubjectTagger", "pattern": "."},
                        {"match": "All", "mailet": "LocalDelivery"}],
               "error": [{"match": "All", "mailet": "RemoteDelivery"}],
               "bounces": [{"match": "All", "mailet": "RemoteDelivery"}]}}
    t = tern_factory(cfg, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    m1 = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["alice@example.test"], marked_message(m1)).code == 250
    f1 = find_message(t, "alice@example.test", m1)
    assert f1 and b"X-Version-1: matched" in f1[0].read_bytes()
    build(2)
    t.reload()
    m2 = uuid.uuid4().hex
    assert send_mail(t, "s@example.org", ["alice@example.test"], marked_message(m2)).code == 250
    f2 = find_message(t, "alice@example.test", m2)
    assert f2 and b"X-Version-2: matched" in f2[0].read_bytes(), f2[0].read_bytes()[:300]


def test_root_deadline_answers_and_processing_goes_on(tern_factory, tmp_path):
    cfg = faulty_config(build_faulty(tmp_path, 4))
    cfg["mailets"] = {"root_deadline": "300ms"}
    cfg["processors"]["root"] = [{"match": "All", "mailet": "Faulty"},
                                 {"match": "All", "mailet": "LocalDelivery"}]
    t = tern_factory(cfg, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    marker = uuid.uuid4().hex
    t0 = time.monotonic()
    r = send_mail(t, "s@example.org", ["alice@example.test"], marked_message(marker))
    took = time.monotonic() - t0
    assert r.code == 250, r
    assert took < 1.8, took            # the mailet takes 2 s; the deadline is 0.3 s
    assert log_has(t, f"event=root_deadline qid={r.qid}")
    files = find_message(t, "alice@example.test", marker)
    assert files and b"X-Slow: done\r\n" in files[0].read_bytes()


def test_split_in_root_then_reject_refuses_the_whole_message(tern_factory, tmp_path):
    # bob's part leaves root first (parked until the answer); alice's part
    # is rejected: the client hears 550 and bob gets nothing.
    cfg = plugin_config(tmp_path, action="reject")
    cfg["processors"]["root"] = [
        {"match": "RecipientIs=bob@example.test", "mailet": "ToProcessor",
         "processor": "deliver"},
        {"match": "All", "mailet": "SubjectTagger", "pattern": r"\[ad\]", "action": "reject"},
        {"match": "All", "mailet": "ToProcessor", "processor": "deliver"}]
    t = tern_factory(cfg, start=False)
    t.write_config()
    ctl(t, "account", "add", "alice@example.test")
    ctl(t, "account", "add", "bob@example.test")
    t.start()
    marker = uuid.uuid4().hex
    r = send_mail(t, "x@example.org", ["alice@example.test", "bob@example.test"],
                  marked_message(marker, subject="[ad] x"))
    assert r.code == 550, r
    assert wait_for(lambda: spool_count(t) == 0)
    time.sleep(0.3)
    assert not mailbox_files(t, "bob@example.test")
    # Without the reject, both parts are delivered.
    m2 = uuid.uuid4().hex
    r = send_mail(t, "x@example.org", ["alice@example.test", "bob@example.test"],
                  marked_message(m2, subject="hello"))
    assert r.code == 250, r
    assert find_message(t, "alice@example.test", m2) and find_message(t, "bob@example.test", m2)
