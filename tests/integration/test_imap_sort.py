"""IMAP SORT and THREAD (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO) against a
real ternd on both backends (the `imap` fixture of test_imap.py), driven by
python3's imaplib. The messages are built so that every sort key orders them
differently; the expected orders are derived from the messages' fields here
(sizes from the bytes sent), the threads from RFC 5256's rules by hand.
"""

import imaplib

from test_imap import connect, imap  # noqa: F401  (the fixture, both backends)

ADDR = "alice@example.test"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def build():
    # (from, to, cc, subject, date header or None, message-id or None,
    #  references, in-reply-to, internal date (day of month, month))
    spec = [
        ("Zoe <amy@x.test>", "b@x.test", "c@x.test", "Re: beta",
         "Wed, 03 Jan 2024 10:00:00 +0000", "m1@t", "", "", (5, 2)),
        ("Bob <zack@x.test>", "zz@x.test", None, "alpha",
         "Mon, 01 Jan 2024 10:00:00 +0000", "m2@t", "", "", (3, 2)),
        ("<mike@x.test>", ADDR, None, "[list] Fwd: alpha",
         "Fri, 05 Jan 2024 10:00:00 +0000", "m3@t", "<m2@t>", "", (1, 2)),
        ("Al <bob@x.test>", ADDR, None, "beta",
         "Tue, 02 Jan 2024 10:00:00 +0000", "m4@t", "", "", (6, 2)),
        ("Yan <carl@x.test>", ADDR, None, "Re: alpha (fwd)",
         "Thu, 04 Jan 2024 10:00:00 +0000", "m5@t", "", "<m3@t>", (2, 2)),
        ("dave@x.test", ADDR, None, "gamma", None, None, "<gone@t> <m1@t>", "", (31, 12)),
    ]
    msgs = []
    for i, (frm, to, cc, subj, date, mid, refs, irt, arr) in enumerate(spec):
        h = f"From: {frm}\r\nTo: {to}\r\n"
        if cc:
            h += f"Cc: {cc}\r\n"
        h += f"Subject: {subj}\r\n"
        if date:
            h += f"Date: {date}\r\n"
        if mid:
            h += f"Message-ID: <{mid}>\r\n"
        if refs:
            h += f"References: {refs}\r\n"
        if irt:
            h += f"In-Reply-To: {irt}\r\n"
        body = "x" * (((i * 37) % 6) * 50 + 10) + "\r\n"  # sizes in another order
        day, month = arr
        year = 2023 if month == 12 else 2024
        mon = MONTHS[month - 1]
        msgs.append(((h + "\r\n" + body).encode(), f'"{day:02d}-{mon}-{year} 12:00:00 +0000"'))
    return msgs


def setup_box(c):
    # A throwaway first message, expunged, so that UIDs are sequence numbers + 1.
    assert c.append("INBOX", None, None, b"Subject: gone\r\n\r\nx\r\n")[0] == "OK"
    msgs = build()
    for data, date in msgs:
        typ, resp = c.append("INBOX", None, date, data)
        assert typ == "OK", resp
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Deleted)")
    assert c.expunge()[0] == "OK"
    return msgs


def sort(c, crit, *keys, uid=False):
    if uid:
        typ, data = c.uid("SORT", crit, "UTF-8", *keys)
    else:
        typ, data = c.sort(crit, "UTF-8", *keys)
    assert typ == "OK", data
    return [int(x) for x in data[0].split()] if data and data[0] else []


def thread(c, algo, *keys, uid=False):
    if uid:
        typ, data = c.uid("THREAD", algo, "UTF-8", *keys)
    else:
        typ, data = c.thread(algo, "UTF-8", *keys)
    assert typ == "OK", data
    return data[0].decode() if data and data[0] else ""


def test_capabilities(imap):  # noqa: F811
    c = connect(imap)
    caps = c.capability()[1][0].split()
    for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES"):
        assert cap in caps
    c.logout()


def test_sort_keys(imap):  # noqa: F811
    c = connect(imap)
    msgs = setup_box(c)
    assert sort(c, "(SUBJECT)", "ALL") == [2, 3, 5, 1, 4, 6]
    assert sort(c, "(DATE)", "ALL") == [6, 2, 4, 1, 5, 3]  # 6 has no Date: its arrival
    assert sort(c, "(REVERSE DATE)", "ALL") == [3, 5, 1, 4, 2, 6]
    assert sort(c, "(ARRIVAL)", "ALL") == [6, 3, 5, 2, 1, 4]
    assert sort(c, "(FROM)", "ALL") == [1, 4, 5, 6, 3, 2]
    assert sort(c, "(DISPLAYFROM)", "ALL") == [4, 2, 6, 3, 5, 1]
    assert sort(c, "(TO)", "ALL") == [3, 4, 5, 6, 1, 2]
    assert sort(c, "(DISPLAYTO)", "ALL") == [3, 4, 5, 6, 1, 2]
    assert sort(c, "(CC)", "ALL") == [2, 3, 4, 5, 6, 1]
    sizes = [len(m[0]) for m in msgs]
    want = sorted(range(1, 7), key=lambda i: (sizes[i - 1], i))
    assert sort(c, "(SIZE)", "ALL") == want
    assert sort(c, "(REVERSE SIZE)", "ALL") == \
        sorted(range(1, 7), key=lambda i: (-sizes[i - 1], i))
    assert sort(c, "(SUBJECT REVERSE DATE)", "ALL") == [3, 5, 2, 1, 4, 6]
    # search keys and the UID form
    assert sort(c, "(SUBJECT)", "FROM", "bob") == [2, 4]
    assert sort(c, "(DATE)", "ALL", uid=True) == [7, 3, 5, 2, 6, 4]
    assert sort(c, "(DATE)", "UID", "3:5", uid=True) == [3, 5, 4]
    assert sort(c, "(DATE)", "SUBJECT", "nothing-like-this") == []
    c.logout()


def test_thread(imap):  # noqa: F811
    c = connect(imap)
    setup_box(c)
    assert thread(c, "REFERENCES", "ALL") == "(2 3 5)(4 1 6)"
    assert thread(c, "ORDEREDSUBJECT", "ALL") == "(6)(2 (5)(3))(4 1)"
    # 3 left out: 5's parent becomes a dummy, pruned, so 5 hangs under 2.
    assert thread(c, "REFERENCES", "NOT", "3") == "(2 5)(4 1 6)"
    assert thread(c, "REFERENCES", "ALL", uid=True) == "(3 4 6)(5 2 7)"
    assert thread(c, "REFERENCES", "SUBJECT", "nothing-like-this") == ""
    c.logout()


def test_errors(imap):  # noqa: F811
    c = connect(imap)
    setup_box(c)
    typ, data = c._simple_command("SORT", "(DATE)", "KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    # four BADs: the fixture's imap.max_errors is 5
    for args in (("(FOO)", "UTF-8", "ALL"), ("(DATE)", "UTF-8"), ("(REVERSE)", "UTF-8", "ALL")):
        try:
            typ, data = c._simple_command("SORT", *args)
        except imaplib.IMAP4.error as e:
            assert "BAD" in str(e) or "SORT" in str(e), e
        else:
            assert typ == "BAD", (args, typ, data)
    try:
        typ, data = c._simple_command("THREAD", "XYZ", "UTF-8", "ALL")
    except imaplib.IMAP4.error:
        pass
    else:
        assert typ == "BAD"
    assert c.noop()[0] == "OK"
    c.logout()


def test_encoded_addresses(imap):  # noqa: F811
    """The index keeps From/To/Cc decoded; a display name whose encoded
    words decode to specials ("Doe, Jane") must still sort by the header's
    first address, and a header past the batched read's bound (here about
    72 KiB) is read alone."""
    c = connect(imap)
    assert c.create("Enc")[0] == "OK"
    pad = "".join(f"X-Pad-{i}: {'p' * 70}\r\n" for i in range(900))
    froms = [
        "=?utf-8?q?Doe=2C_Jane?= <zed@x.test>",
        "mike <mike@x.test>",
        "=?utf-8?q?=C3=89mile?= <adam@x.test>",
        '"Quoted, Name" <bob@x.test>',
        "=?utf-8?q?=C3=85sa?= <carl@x.test>",
    ]
    for i, frm in enumerate(froms):
        extra = pad if i == 4 else ""
        data = f"From: {frm}\r\nTo: t{i}@x.test\r\nSubject: s{i}\r\n{extra}\r\nbody\r\n"
        typ, resp = c.append("Enc", None, None, data.encode())
        assert typ == "OK", resp
    c.select("Enc")
    assert sort(c, "(FROM)", "ALL") == [3, 4, 5, 2, 1]
    # "DOE, JANE" < "MIKE" < "QUOTED, NAME" < U+00C5 (C3 85) < U+00C9 (C3 89)
    assert sort(c, "(DISPLAYFROM)", "ALL") == [1, 2, 4, 5, 3]
    assert sort(c, "(REVERSE FROM)", "ALL", uid=True) == [1, 2, 5, 4, 3]
    c.logout()
