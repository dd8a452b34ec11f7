"""Store fault tests, through tests/store/burst.c (build/tests/store/store_burst):

- kill -9 in the middle of a burst of appends, then reopen the store: every
  append that was acknowledged is there with its exact bytes, and nothing
  half-written is visible (local backend, and pg);
- PostgreSQL stopped (pg_ctl stop -m fast) and started again during a
  burst: the calls in flight fail with ETEMP (their callbacks run, the
  process does not crash) and later calls succeed;
- local reconciliation at open: a Maildir file without a row is indexed, a
  row without its file is dropped.

pg needs the cluster tools/test starts (TERN_TEST_PG_CONNINFO and
TERN_PG_STATE from tests/pg/start); without it the pg cases are skipped.
Trusts: the burst program's ACK lines, which the check step verifies
against the store.
"""

import hashlib
import os
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import BUILD, ROOT, SLOW

BURST = BUILD / "tests" / "store" / "store_burst"
PG_CTL = ROOT / "tests" / "pg" / "ctl"

pytestmark = pytest.mark.skipif(not BURST.exists(), reason="store_burst not built")


def _pg_args():
    if not os.environ.get("TERN_TEST_PG_CONNINFO") or not os.environ.get("TERN_PG_STATE"):
        pytest.skip("no PostgreSQL cluster (tools/test starts one with tests/pg/start)")
    return ["tern_fault_" + uuid.uuid4().hex[:12]]


def _run(args, timeout=60 * SLOW):
    p = subprocess.run([str(BURST)] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def store_dir():
    with tempfile.TemporaryDirectory(prefix="tern-fault-") as d:
        yield d


def _acks(path):
    with open(path) as f:
        return sum(1 for line in f if line.startswith("ACK ") and line.endswith("\n"))


def _stderr(store_dir):
    try:
        with open(os.path.join(store_dir, "stderr")) as f:
            return f.read()[-2000:]
    except OSError:
        return ""


def _wait_acks(p, log, want):
    deadline = time.monotonic() + 60 * SLOW
    while _acks(log) < want and time.monotonic() < deadline:
        assert p.poll() is None, f"burst ended early: {_stderr(os.path.dirname(log))}"
        time.sleep(0.02)
    assert _acks(log) >= want, f"{_acks(log)} acknowledgements, waited for {want}"


def _kill_mid_burst(backend, store_dir, db):
    base = [backend, store_dir] + db
    rc, out, err = _run(["init"] + base)
    if rc == 77:
        pytest.skip(out.strip())
    assert rc == 0, f"init failed: {out}{err}"
    acks = os.path.join(store_dir, "acks")
    for round_ in range(3):
        # Each round appends on top of the last: the kill lands in a store
        # that already went through a kill and a reopen.
        with open(acks + str(round_), "w") as out_f, \
                open(os.path.join(store_dir, "stderr"), "w") as err_f:
            p = subprocess.Popen([str(BURST), "append"] + base + ["100000", "8", "300"],
                                 stdout=out_f, stderr=err_f)
            deadline = time.monotonic() + 60 * SLOW
            want = 40 + 30 * round_
            while _acks(acks + str(round_)) < want and time.monotonic() < deadline:
                assert p.poll() is None, f"burst ended early: {_stderr(store_dir)}"
                time.sleep(0.02)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
            assert _acks(acks + str(round_)) >= want, "no acknowledgements in time"
        # Check against every ACK so far, across rounds.
        with open(acks, "w") as all_f:
            for k in range(round_ + 1):
                with open(acks + str(k)) as f:
                    all_f.write("".join(line for line in f if line.endswith("\n")))
        rc, out, err = _run(["check"] + base + [acks], timeout=120 * SLOW)
        assert rc == 0, f"after kill {round_ + 1}:\n{out}{err}"
        assert out.startswith("OK "), out


def test_kill9_mid_burst_local(store_dir):
    _kill_mid_burst("local", store_dir, [])


def test_kill9_mid_burst_pg(store_dir):
    db = _pg_args()
    try:
        _kill_mid_burst("pg", store_dir, db)
    finally:
        _run(["drop", "pg", store_dir] + db)


@pytest.mark.timeout(180 * SLOW)
def _check_blob_names(store_dir):
    """Every file under its final name in the blob directory holds the
    whole body: its sha256 is its name (a torn write would not be)."""
    root = os.path.join(store_dir, "blobs")
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) == "tmp":
            continue
        for name in files:
            if len(name) != 64:
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == name, f"torn blob {name}"
            n += 1
    return n


def test_kill9_mid_burst_pg_blob(store_dir):
    """kill -9 during a burst with postgres.blob_dir: every acknowledged
    append reads back (its file and its row were both durable), and no
    file under its final name is partial."""
    db = _pg_args()
    try:
        _kill_mid_burst("pg-blob", store_dir, db)
        assert _check_blob_names(store_dir) >= 40
    finally:
        _run(["drop", "pg-blob", store_dir] + db)


def test_pg_restart_during_burst(store_dir):
    db = _pg_args()
    base = ["pg", store_dir] + db
    try:
        rc, out, err = _run(["init"] + base)
        if rc == 77:
            pytest.skip(out.strip())
        assert rc == 0, f"init failed: {out}{err}"
        log = os.path.join(store_dir, "acks")
        stop = os.path.join(store_dir, "stop")
        with open(log, "w") as out_f, open(os.path.join(store_dir, "stderr"), "w") as err_f:
            # Appends until told to stop, so the database goes away under
            # a steady stream whatever the machine's speed.
            p = subprocess.Popen([str(BURST), "append"] + base +
                                 ["10000000", "8", str(150 * SLOW), stop],
                                 stdout=out_f, stderr=err_f)
            try:
                _wait_acks(p, log, 50)
                subprocess.run([str(PG_CTL), "halt"], check=True, timeout=60)
                halted_at = _acks(log)
                # Long enough that some append meets the outage even on a
                # slow (sanitizer) build of a loaded machine.
                time.sleep(2 * SLOW)
                subprocess.run([str(PG_CTL), "resume"], check=True, timeout=90)
                resumed_at = _acks(log)
                _wait_acks(p, log, resumed_at + 100)
                open(stop, "w").close()
                rc = p.wait(timeout=120 * SLOW)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                # A failed halt or resume must not leave the cluster down
                # for the tests after this one.
                subprocess.run([str(PG_CTL), "resume"], timeout=90)
        err = _stderr(store_dir)
        lines = open(log).read().splitlines()
        done = [line for line in lines if line.startswith("DONE ")]
        errs = [line for line in lines if line.startswith("ERR ")]
        etemp = [line for line in lines if line.startswith("ETEMP ")]
        assert not errs, "failures other than ETEMP:\n" + "\n".join(errs[:10]) + err[-2000:]
        assert done, f"burst did not finish (rc {rc}):\n{err[-2000:]}"
        acked, n_etemp, n_err = (int(x) for x in done[0].split()[1:4])
        assert rc == 0, f"burst rc {rc}: {done[0]}\n{err[-2000:]}"
        assert acked == _acks(log)
        # The database was down for two seconds under a steady stream of
        # appends: some of them must have been told so.
        assert n_etemp > 0 and etemp, "no call failed with ETEMP while the database was down"
        # ... and calls succeeded after the restart.
        assert _acks(log) > halted_at
        rc, out, err = _run(["check"] + base + [log], timeout=120 * SLOW)
        assert rc == 0, f"{out}{err}"
    finally:
        _run(["drop", "pg", store_dir] + db)


def test_local_reconcile_at_open(store_dir):
    """Local: a message file without a row (dropped in by hand, as another
    Maildir tool would) is indexed at open, and a row whose file is gone
    is dropped, not served as a broken message."""
    base = ["local", store_dir]
    rc, out, err = _run(["init"] + base)
    if rc == 77:
        pytest.skip(out.strip())
    assert rc == 0, f"init failed: {out}{err}"
    log = os.path.join(store_dir, "acks")
    rc, out, err = _run(["append"] + base + ["20", "4", "60"])
    assert rc == 0, f"{out}{err}"
    with open(log, "w") as f:
        f.write(out)
    maildir = os.path.join(store_dir, "mail", "example.test", "burst", "Maildir")
    files = sorted(os.path.join(maildir, d, n) for d in ("cur", "new")
                   for n in os.listdir(os.path.join(maildir, d)))
    assert len(files) == 20, files
    # One file goes; its acknowledgement is no longer a promise to check.
    gone = files[3]
    with open(gone, "rb") as f:
        subject = next(line for line in f.read().split(b"\r\n") if line.startswith(b"Subject: "))
    gone_n = subject.split()[-1].decode()
    os.unlink(gone)
    with open(log, "w") as f:
        f.write("".join(line + "\n" for line in out.splitlines()
                        if line.startswith("ACK ") and line.split()[2] != gone_n))
    # One file arrives, a copy of another message's bytes, in new/.
    with open(files[5], "rb") as f:
        data = f.read()
    with open(os.path.join(maildir, "new", "1700000000.M1P1Q1.stray.example"), "wb") as f:
        f.write(data)
    rc, out, err = _run(["check"] + base + [log], timeout=120 * SLOW)
    assert rc == 0, f"{out}{err}"
    assert out.startswith("OK visible=20 acked=19"), out
