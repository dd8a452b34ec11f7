"""The SMTP recipient check against the directory (smtp.verify_recipients,
on by default) and the ternctl commands that fill it: domains, accounts,
aliases and catch-alls, +detail sub-addressing, postmaster, and changes made
with ternctl while ternd runs."""

import subprocess

from conftest import TERNCTL, make_message


def ctl(t, *args, stdin=None, check=True):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], input=stdin,
                       capture_output=True, timeout=60)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def verifying(tern_factory, **over):
    t = tern_factory({"smtp": {"verify_recipients": True, **over}}, start=False)
    t.write_config()
    return t


def rcpt_codes(t, *addrs):
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@example.org>").code == 250
    codes = [c.cmd(f"RCPT TO:<{a}>") for a in addrs]
    c.cmd("QUIT")
    return codes


def test_unknown_users_refused_known_accepted(tern_factory):
    t = verifying(tern_factory)
    ctl(t, "account", "add", "alice@example.test")
    t.start()
    r = rcpt_codes(t, "alice@example.test", "ALICE@EXAMPLE.TEST", "nobody@example.test",
                   "alice+lists@example.test", "postmaster@example.test", "postmaster")
    assert [x.code for x in r] == [250, 250, 550, 250, 250, 250], r
    assert r[2].enhanced == "5.1.1", r[2]
    assert "event=rcpt" in t.log() and "result=unknown_user" in t.log()


def test_aliases_and_catch_all(tern_factory):
    t = verifying(tern_factory)
    ctl(t, "account", "add", "bob@example.test")
    ctl(t, "alias", "add", "sales@example.test", "bob@example.test", "ext@elsewhere.example")
    t.start()
    r = rcpt_codes(t, "sales@example.test", "random@example.test")
    assert [x.code for x in r] == [250, 550], r
    # A catch-all added while ternd runs takes effect at once.
    ctl(t, "alias", "add", "@example.test", "bob@example.test")
    r = rcpt_codes(t, "random@example.test")
    assert r[0].code == 250, r
    out = ctl(t, "alias", "list").stdout.decode()
    assert "sales@example.test" in out and "@example.test" in out, out
    ctl(t, "alias", "remove", "@example.test")
    r = rcpt_codes(t, "random@example.test")
    assert r[0].code == 550, r


def test_domain_added_with_ternctl_is_local(tern_factory):
    t = verifying(tern_factory)
    t.start()
    r = rcpt_codes(t, "x@extra.example")
    assert r[0].code == 554 and r[0].enhanced == "5.7.1", r    # not ours: relay denied
    ctl(t, "domain", "add", "extra.example")
    ctl(t, "account", "add", "x@extra.example")
    r = rcpt_codes(t, "x@extra.example", "y@extra.example")
    assert [x.code for x in r] == [250, 550], r
    assert "extra.example" in ctl(t, "domain", "list").stdout.decode()
    # A domain with accounts cannot be removed; after removing them it can.
    assert ctl(t, "domain", "remove", "extra.example", check=False).returncode != 0
    ctl(t, "account", "remove", "x@extra.example")
    ctl(t, "domain", "remove", "extra.example")
    r = rcpt_codes(t, "x@extra.example")
    assert r[0].code == 554, r


def test_config_domains_seeded(tern_factory):
    t = verifying(tern_factory)
    # Before ternd ever ran, ternctl knows the config's domains.
    ctl(t, "account", "add", "carol@example.test", "--quota", "10MiB", "--quota-messages", "5")
    out = ctl(t, "account", "show", "carol@example.test").stdout.decode()
    assert "quota_bytes=10485760" in out and "quota_messages=5" in out, out
    assert "example.test" in ctl(t, "domain", "list").stdout.decode()
    t.start()
    c = t.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<s@example.org>").code == 250
    assert c.cmd("RCPT TO:<carol@example.test>").code == 250
    assert c.data(make_message(subject="to carol")).code == 250


def test_passwords_are_argon2id(tern_factory):
    t = verifying(tern_factory)
    ctl(t, "account", "add", "dave@example.test", "--password-stdin", stdin=b"s3cret\n")
    assert "password=set" in ctl(t, "account", "show", "dave@example.test").stdout.decode()
    ctl(t, "account", "passwd", "dave@example.test", stdin=b"other\n")
    # An empty password is refused, not stored.
    p = ctl(t, "account", "passwd", "dave@example.test", stdin=b"\n", check=False)
    assert p.returncode != 0
    db = t.state_dir / "mail" / ".tern.sqlite"
    assert db.exists(), db                 # the local backend's index (storage.backend: local)
    import sqlite3
    row = sqlite3.connect(str(db)).execute(
        "SELECT password_hash FROM accounts WHERE name='dave@example.test'").fetchone()
    assert row[0].startswith("{ARGON2ID}$argon2id$"), row
    assert "{SCRAM-SHA-256}" in row[0], row  # SCRAM keys stored alongside
    assert "other" not in row[0]


def test_bad_names_refused(tern_factory):
    t = verifying(tern_factory)
    for bad in ("no-at-sign", "a b@example.test", "x@unknown-domain.example", "@example.test"):
        p = ctl(t, "account", "add", bad, check=False)
        assert p.returncode != 0, bad
        assert p.stderr, bad


def test_verification_off(tern_factory):
    t = tern_factory({"smtp": {"verify_recipients": False}})
    r = rcpt_codes(t, "anyone@example.test", "x@elsewhere.example")
    assert [x.code for x in r] == [250, 554], r


def test_auth_backend_users_are_recipients(tern_factory, tmp_path):
    """A user only a password file knows (no store account yet: it gets one
    at first login) is still a valid recipient."""
    users = tmp_path / "users"
    users.write_text("dora@example.test:{PLAIN}x\n")
    t = verifying(tern_factory)
    t.config["auth"] = {"backends": ["internal", "file"]}
    t.config["auth_file"] = {"path": str(users)}
    t.write_config()
    t.start()
    r = rcpt_codes(t, "dora@example.test", "nobody@example.test")
    assert [x.code for x in r] == [250, 550], r
