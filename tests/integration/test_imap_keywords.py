"""Keyword case against a real ternd on both backends: a keyword comes back
spelled as the client first stored it in the mailbox (RFC 9051 2.3.2: flag
names are case-insensitive, but the client sees what it set), later
spellings reuse the first, and STORE -FLAGS, SEARCH KEYWORD/UNKEYWORD and
the updates another session receives all match without case.
"""

import re

from test_imap import connect, imap, msg, seed  # noqa: F401


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


def test_keyword_keeps_its_case(imap):  # noqa: F811
    c = connect(imap)
    seed(c, 3)
    c.select("INBOX")
    assert c.untagged_responses.get("FLAGS") == [
        b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"], c.untagged_responses
    c.untagged_responses.clear()
    typ, data = c.store("1", "+FLAGS", "(Foo)")
    assert typ == "OK" and b"Foo" in data[0], data
    # A keyword new to the mailbox: FLAGS and PERMANENTFLAGS again (RFC 9051 7.3.5).
    assert c.untagged_responses.get("FLAGS", [])[-1].endswith(b"\\Draft Foo)"), c.untagged_responses
    assert b"Foo" in flags(c, 1) and b"foo" not in flags(c, 1)

    # Another spelling in the same mailbox is the same keyword, shown as first written.
    typ, data = c.store("2", "+FLAGS", "(FOO)")
    assert typ == "OK", data
    assert b"Foo" in flags(c, 2) and b"FOO" not in flags(c, 2)
    assert search(c, "KEYWORD", "foo") == [b"1", b"2"]
    assert search(c, "KEYWORD", "FOO") == [b"1", b"2"]
    assert search(c, "UNKEYWORD", "fOo") == [b"3"]

    # Adding it again in any case changes nothing; removing in any case removes.
    typ, data = c.store("1", "+FLAGS", "(foo)")
    assert typ == "OK", data
    assert [f for f in flags(c, 1) if f.lower() == b"foo"] == [b"Foo"]
    typ, data = c.store("1", "-FLAGS", "(fOO)")
    assert typ == "OK", data
    assert not [f for f in flags(c, 1) if f.lower() == b"foo"]
    assert search(c, "KEYWORD", "foo") == [b"2"]

    # APPEND keeps the spelling too, and another session is told the same.
    other = connect(imap)
    other.select("INBOX")
    typ, data = c.append("INBOX", r"(\Seen $Label1)", None, msg("labelled"))
    assert typ == "OK", data
    c.noop()
    assert b"$Label1" in flags(c, 4)
    typ, data = c.store("3", "+FLAGS", "(MyTag)")
    assert typ == "OK", data
    other.untagged_responses.clear()
    typ, data = other.noop()
    assert typ == "OK"
    fetches = b" ".join(x for x in other.untagged_responses.get("FETCH", []) if isinstance(x, bytes))
    assert b"MyTag" in fetches, other.untagged_responses
    assert b"MyTag" in other.untagged_responses.get("FLAGS", [b""])[-1], other.untagged_responses
    assert search(other, "KEYWORD", "$label1") == [b"4"]
    assert search(other, "KEYWORD", "mytag") == [b"3"]
    other.logout()
    c.logout()

    # SELECT lists the mailbox's keywords, one spelling each.
    d = connect(imap)
    d.select("INBOX")
    fl = d.untagged_responses["FLAGS"][-1]
    assert fl == b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 Foo MyTag)", fl
    perm = b" ".join(x for x in d.untagged_responses.get("OK", []) if isinstance(x, bytes))
    assert b"[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 Foo MyTag \\*)]" in perm, perm
    d.logout()
