"""CONDSTORE SEARCH (RFC 7162 3.1.5) against a real ternd on both backends:
the MODSEQ of a SEARCH or ESEARCH answer is the highest mod-sequence of the
messages it returns, not the mailbox's. Mod-sequences are read back with
FETCH MODSEQ, never assumed.
"""

import re

from test_imap import connect, imap, msg  # noqa: F401


def modseq_of(c, n):
    typ, data = c.fetch(str(n), "(MODSEQ)")
    assert typ == "OK", data
    return int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))


def untagged(c, name):
    return [x if isinstance(x, bytes) else x[0] for x in c.untagged_responses.pop(name, [])]


def test_search_modseq_is_highest_of_matches(imap):  # noqa: F811
    c = connect(imap)
    for i in range(3):
        assert c.append("INBOX", None, None, msg(subject=f"m{i}"))[0] == "OK"
    c.select("INBOX")
    assert c.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
    assert c.store("3", "+FLAGS", "(\\Seen)")[0] == "OK"
    m1, m2, m3 = modseq_of(c, 1), modseq_of(c, 2), modseq_of(c, 3)
    assert m3 > m1 > m2

    typ, data = c._simple_command("SEARCH", "1", "MODSEQ", "1")
    assert typ == "OK"
    assert untagged(c, "SEARCH") == [f"1 (MODSEQ {m1})".encode()]
    typ, data = c._simple_command("SEARCH", "1:2", "MODSEQ", "1")
    assert untagged(c, "SEARCH") == [f"1 2 (MODSEQ {max(m1, m2)})".encode()]
    typ, data = c._simple_command("UID", "SEARCH", "MODSEQ", str(m1))
    assert untagged(c, "SEARCH") == [f"1 3 (MODSEQ {m3})".encode()]
    typ, data = c._simple_command("SEARCH", "RETURN", "(ALL COUNT)", "2", "MODSEQ", "1")
    es = untagged(c, "ESEARCH")
    assert len(es) == 1 and es[0].endswith(f"COUNT 1 ALL 2 MODSEQ {m2}".encode()), es
    # nothing matched: no MODSEQ at all
    typ, data = c._simple_command("SEARCH", "MODSEQ", str(m3 + 1))
    got = untagged(c, "SEARCH")
    assert got in ([b""], []), got
    c.logout()
