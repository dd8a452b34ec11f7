"""The content mailets in a real ternd: mail sent over SMTP goes through a
root processor of AddHeader, SetHeader, RemoveHeader, AddSubjectPrefix,
AddFooter, LogMessage and JsonExport, is delivered to the store (read back
as Maildir files), and the exports are read back: JSON lines from the file,
and POSTs received by a python http.server on loopback (2xx, error status
with on_error, a dead endpoint)."""

import base64
import email
import email.policy
import http.server
import json
import subprocess
import threading
import time
import uuid

from conftest import TERNCTL, make_message, send_mail as _send_mail

ACCOUNT = "alice@example.test"


def ctl(t, *args):
    p = subprocess.run([str(TERNCTL), "-c", str(t.conf_path), *args], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)


def wait_for(pred, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def delivered(t, marker):
    """Message files in the state dir's Maildirs that hold marker."""
    def look():
        out = []
        for f in (t.state_dir / "mail").rglob("*"):
            if f.is_file() and ("/new/" in str(f) or "/cur/" in str(f)):
                data = f.read_bytes()
                if marker.encode() in data:
                    out.append(data)
        return out
    return wait_for(look)


def send(t, message, rcpts=(ACCOUNT,)):
    c = t.connect()
    try:
        r = _send_mail(c, "sender@example.org", list(rcpts), message)
    finally:
        c.cmd("QUIT")
    assert r.code == 250, r
    return r


def chain(steps, error=None):
    return {
        "processors": {
            "root": steps + [{"match": "All", "mailet": "ToProcessor", "processor": "deliver"}],
            "deliver": [{"match": "All", "mailet": "LocalDelivery"}],
            "error": error or [{"match": "All", "mailet": "RemoteDelivery"}],
            "bounces": [{"match": "All", "mailet": "RemoteDelivery"}],
        }
    }


def start(tern_factory, over):
    t = tern_factory(over, start=False)
    t.write_config()
    ctl(t, "account", "add", ACCOUNT)
    t.start()
    return t


def test_header_subject_footer_log_and_file_export(tern_factory, tmp_path):
    export = tmp_path / "export" / "mail.jsonl"
    export.parent.mkdir()
    steps = [
        {"match": "All", "mailet": "AddHeader", "name": "X-Content-Test", "value": "added"},
        {"match": "All", "mailet": "SetHeader", "name": "X-Priority", "value": "5"},
        {"match": "All", "mailet": "RemoveHeader", "name": ["X-Internal", "X-Other-Internal"]},
        {"match": "All", "mailet": "AddSubjectPrefix", "prefix": "[Ext]"},
        {"match": "All", "mailet": "AddFooter", "text": "--\nFooter from Tern\n"},
        {"match": "All", "mailet": "LogMessage", "tag": "content-test",
         "headers": ["Subject", "X-Content-Test"], "body": 16},
        {"match": "All", "mailet": "JsonExport", "file": str(export), "fsync": "true"},
    ]
    t = start(tern_factory, chain(steps))
    marker = uuid.uuid4().hex
    body = (f"Gr\u00fc\u00dfe {marker}\r\n").encode("utf-8")
    msg = make_message(
        subject=f"hello {marker}",
        headers=["X-Internal: secret", "X-Priority: 1", "X-Priority: 2", "MIME-Version: 1.0",
                 "Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: base64"],
        body=base64.encodebytes(body).replace(b"\n", b"\r\n"))
    r = send(t, msg)
    files = delivered(t, "X-Content-Test")
    assert len(files) == 1
    data = files[0]
    head = data.split(b"\r\n\r\n")[0]
    assert b"X-Content-Test: added\r\n" in head
    assert head.count(b"X-Priority") == 1 and b"X-Priority: 5\r\n" in head
    assert b"X-Internal" not in head
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == f"[Ext] hello {marker}"
    # The footer went into the base64 text, re-encoded.
    assert b"Footer from Tern" not in data
    assert parsed.get_payload(decode=True) == (
        f"Gr\u00fc\u00dfe {marker}\r\n--\r\nFooter from Tern\r\n".encode("utf-8"))
    assert parsed["Content-Transfer-Encoding"] == "base64"

    log = t.log(0)
    line = [ln for ln in log.splitlines() if "mailet=LogMessage" in ln and r.qid in ln]
    assert len(line) == 1, log[-2000:]
    assert "tag=content-test" in line[0]
    assert f'h.subject="[Ext] hello {marker}"' in line[0]
    assert "h.x-content-test=added" in line[0]
    assert "body=" in line[0] and "nrcpt=1" in line[0]

    recs = [json.loads(ln) for ln in wait_for(lambda: export.exists() and
                                              export.read_text().splitlines())]
    assert len(recs) == 1
    rec = recs[0]
    assert rec["qid"] == r.qid
    assert rec["from"]["envelope"] == "sender@example.org"
    assert rec["to"]["envelope"] == [ACCOUNT]
    assert rec["subject"] == f"[Ext] hello {marker}"
    assert rec["body"] == f"Gr\u00fc\u00dfe {marker}\r\n--\r\nFooter from Tern\r\n"
    assert rec["remoteAddr"] == "127.0.0.1"
    assert rec["receivedAt"].endswith("Z")
    names = [h["name"] for h in rec["headers"]]
    assert "X-Content-Test" in names and "X-Internal" not in names
    assert rec["attachments"] == []


def test_footer_leaves_signed_mail_alone(tern_factory):
    t = start(tern_factory, chain([
        {"match": "All", "mailet": "AddFooter", "text": "Footer from Tern"}]))
    marker = uuid.uuid4().hex
    signed = ("Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; "
              "micalg=pgp-sha256; boundary=\"sig\"\r\n\r\n"
              f"--sig\r\nContent-Type: text/plain\r\n\r\nsigned {marker}\r\n"
              "--sig\r\nContent-Type: application/pgp-signature\r\n\r\nSIG\r\n--sig--\r\n")
    msg = make_message(subject=f"signed {marker}", headers=["MIME-Version: 1.0"]).split(
        b"\r\n\r\n")[0] + b"\r\n" + signed.encode()
    r = send(t, msg)
    files = delivered(t, f"signed {marker}\r\n--sig")
    assert len(files) == 1
    assert b"Footer from Tern" not in files[0]
    # The signed part arrives byte for byte.
    assert signed.split("\r\n\r\n", 1)[1].encode() in files[0]
    assert wait_for(lambda: f"qid={r.qid}" in t.log(0) and "signed part" in t.log(0))


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.server.got.append((self.path, dict(self.headers), body))
        status = self.server.status
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def hook_server(status=200):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.got = []
    srv.status = status
    srv.timeout = 1
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    th.start()
    return srv


def test_json_export_posts_to_http_endpoint(tern_factory):
    srv = hook_server(202)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/ingest/mail"
        t = start(tern_factory, chain([
            {"match": "All", "mailet": "JsonExport", "url": url, "timeout": "5s"}]))
        marker = uuid.uuid4().hex
        msg = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nTo: " + ACCOUNT.encode() +
               b"\r\nSubject: =?iso-8859-1?q?R=E9sum=E9?= " + marker.encode() + b"\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
               b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\nVoil=E0\r\n"
               b"--b\r\nContent-Type: application/pdf; name=cv.pdf\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
        r = send(t, msg)
        assert delivered(t, marker)
        assert wait_for(lambda: srv.got)
        path, headers, body = srv.got[0]
        assert path == "/ingest/mail"
        assert headers["Content-Type"] == "application/json"
        rec = json.loads(body)
        assert rec["qid"] == r.qid
        assert rec["subject"] == f"R\u00e9sum\u00e9 {marker}"
        assert rec["from"]["header"] == "J\u00fcrgen <j@example.org>"
        assert rec["body"] == "Voil\u00e0"
        assert rec["attachments"] == [{"name": "cv.pdf", "type": "application/pdf",
                                       "size": rec["attachments"][0]["size"]}]
        assert 8 <= rec["attachments"][0]["size"] <= 10
    finally:
        srv.shutdown()
        srv.server_close()


def test_json_export_http_failure_applies_on_error(tern_factory):
    srv = hook_server(500)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/fail"
        # A 500: on_error ignore goes on and delivers, and the log says why.
        t = start(tern_factory, chain([
            {"match": "All", "mailet": "JsonExport", "url": url, "on_error": "ignore"}]))
        marker = uuid.uuid4().hex
        r = send(t, make_message(subject=f"x {marker}", to=ACCOUNT))
        assert delivered(t, marker)
        assert len(srv.got) == 1
        assert wait_for(lambda: "answered HTTP 500" in t.log(0))
        assert f"qid={r.qid}" in t.log(0)
    finally:
        srv.shutdown()
        srv.server_close()


def test_json_export_dead_endpoint_sends_mail_to_error(tern_factory, tmp_path):
    # Nothing listens: the step fails and the mail goes to `error`, which
    # here hands it to the remote queue (kept in the spool), never lost.
    srv = hook_server(200)
    port = srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    t = start(tern_factory, chain([
        {"match": "All", "mailet": "JsonExport", "url": f"http://127.0.0.1:{port}/x",
         "timeout": "2s"}]))
    marker = uuid.uuid4().hex
    r = send(t, make_message(subject=f"x {marker}", to=ACCOUNT))
    assert wait_for(lambda: f"event=rcpt_remote qid={r.qid}" in t.log(0)), t.log(0)[-3000:]
    assert "connecting to 127.0.0.1" in t.log(0)


def test_json_export_concurrent_mail_rotates_without_losing_records(tern_factory, tmp_path):
    # Mail from several connections at once (two worker loops, pool
    # threads writing together) into a small file that rotates: every
    # record is whole, on its own line, and none is lost while keep holds.
    export = tmp_path / "rot.jsonl"
    t = start(tern_factory, chain([
        {"match": "All", "mailet": "JsonExport", "file": str(export), "max_size": "8k",
         "keep": "50"}]))
    n_threads, per_thread = 4, 6
    qids, errors = [], []

    def worker(k):
        try:
            c = t.connect()
            try:
                for i in range(per_thread):
                    r = _send_mail(c, "sender@example.org", [ACCOUNT],
                                   make_message(subject=f"c{k}-{i}", to=ACCOUNT,
                                                body="x" * 900 + "\r\n"))
                    qids.append(r.qid)
                    c.cmd("RSET")
            finally:
                c.cmd("QUIT")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert len(qids) == n_threads * per_thread

    def records():
        out = []
        for f in [export] + sorted(tmp_path.glob("rot.jsonl.*")):
            if f.exists():
                data = f.read_text()
                assert data == "" or data.endswith("\n")
                assert f == export or len(data) <= 8192
                out += [json.loads(ln) for ln in data.splitlines()]
        return out
    recs = wait_for(lambda: len(records()) == len(qids) and records())
    assert sorted(r["qid"] for r in recs) == sorted(qids)
    assert len(list(tmp_path.glob("rot.jsonl.*"))) >= 2
