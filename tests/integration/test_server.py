"""Server-wide behaviour: max_connections capped by the descriptor limit,
per-module log levels, and a damaged spool after a crash."""

import re
import resource
import time
from pathlib import Path

from conftest import SLOW, Client, make_message, send_mail


def test_max_connections_capped_by_fd_limit(tern_factory):
    """With RLIMIT_NOFILE at 64 (soft and hard: ternd raises its soft limit
    to the hard one) and max_connections 10000, ternd refuses with 421 4.7.0
    before it runs out of descriptors: no connection is left hanging
    without a banner."""
    t = tern_factory({"server": {"max_connections": 10000}}, start=False)
    t.write_config()

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    t.start(preexec_fn=low_nofile)
    ready = t.wait_log(r"\bevent=ready\b")
    m = re.search(r"\bmax_connections=(\d+)", ready)
    assert m and int(m.group(1)) < 64, ready
    clients, codes = [], []
    for _ in range(80):
        c = Client(t.port(), timeout=5 * SLOW)
        clients.append(c)
        r = c.reply()                    # a timeout here is the failure
        codes.append((r.code, r.enhanced))
    assert any(code == 220 for code, _ in codes), codes
    refused = [x for x in codes if x[0] != 220]
    assert refused and all(x == (421, "4.7.0") for x in refused), codes
    for c in clients:
        c.close()
    # and it recovers once they are gone
    deadline = time.monotonic() + 5 * SLOW
    while True:
        with Client(t.port()) as c:
            if c.reply().code == 220:
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_log_level_per_module(tern_factory):
    t = tern_factory({"server": {"log_level": "warn,server=info"}})
    t.wait_log(r"\bmodule=server\b.*\bevent=ready\b")
    c = t.connect()
    send_mail(c)
    c.cmd("QUIT")
    c.closed()
    time.sleep(0.3)
    smtp_info = [ln for ln in t.log().splitlines()
                 if "module=smtp" in ln and re.search(r"\blevel=(info|debug)\b", ln)]
    assert not smtp_info, smtp_info


def test_log_level_module_debug(tern_factory):
    t = tern_factory({"server": {"log_level": "info,smtp=debug"}})
    c = t.connect()
    send_mail(c)
    c.cmd("QUIT")
    c.closed()
    t.wait_log(r"\blevel=debug\b.*\bmodule=smtp\b|\bmodule=smtp\b.*\blevel=debug\b")
    other_debug = [ln for ln in t.log().splitlines()
                   if "level=debug" in ln and "module=smtp" not in ln]
    assert not other_debug, other_debug


def test_damaged_spool_tail_after_crash(tern):
    """Bytes of a half-written record at the end of a segment (a crash in
    the middle of a write) are skipped at start-up; every complete record
    is replayed."""
    c = tern.connect()
    qids = [send_mail(c, ehlo=(i == 0), message=make_message(subject=f"keep {i}")).qid
            for i in range(3)]
    tern.kill9()
    segs = sorted(Path(tern.state_dir, "spool").rglob("*.seg"))
    assert segs, "no spool segment files"
    with open(segs[-1], "ab") as f:
        f.write(b"\x00\x17garbage of a torn record" * 7)
    tern.start()
    tern.wait_log(r"\bevent=ready\b")
    listing = tern.spool_list()
    for q in qids:
        assert q in listing, (q, listing)
    c = tern.connect()
    r = send_mail(c)
    assert r.code == 250
    tern.kill9()
    tern.start()
    assert r.qid in tern.spool_list()
