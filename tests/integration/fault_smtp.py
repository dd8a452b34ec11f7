"""A small scriptable SMTP server that misbehaves on purpose, for the remote
queue's fault-injection tests (test_queue_faults.py): it plays a remote MX
on one loopback address and answers each connection according to a plan
the test chooses (silent banner, 4xx banner, 4xx/5xx to RCPT, a 5xx after
DATA, a connection dropped in the middle of DATA, a DATA reply held back
forever) and records what it was sent.

It runs its own asyncio loop in a thread so the synchronous tests can drive
ternd meanwhile. Input (the SMTP client under test) is untrusted and only
recorded; it listens on 127.0.0.0/8 only and never speaks TLS (it offers
no STARTTLS, and answers the command with 502 should a client send it).
"""

import asyncio
import threading
import time


class Transaction:
    """One MAIL..end-of-data exchange as the server saw it."""

    def __init__(self, conn, helo, mail_from):
        self.conn = conn            # connection number, from 1
        self.helo = helo
        self.mail_from = mail_from
        self.rcpts = []             # accepted (2xx) recipients
        self.refused = []           # (address, reply) for the others
        self.data = None            # unstuffed message when the end was seen
        self.reply = None           # what we answered after the data, or None

    def __repr__(self):
        return (f"<Transaction conn={self.conn} from={self.mail_from!r} rcpts={self.rcpts} "
                f"refused={self.refused} data={None if self.data is None else len(self.data)} "
                f"reply={self.reply!r}>")


DEFAULT = {
    # None: accept and never say anything (the client times out)
    "banner": "220 {name} ESMTP fault server",
    "ehlo": ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 50000000"],
    # a reply, or a function of the address giving one
    "rcpt": "250 2.1.5 ok",
    "mail": "250 2.1.0 ok",
    "data": "250 2.0.0 queued as {n}",
    # close the connection (RST) once this many bytes of message arrived
    "drop_data_after": None,
    # after the final dot answer nothing; hold the connection until the
    # client goes away (or release() is called)
    "hold_data": False,
}


class FaultSMTP:
    """FaultSMTP(host, port).start(): connection k (from 1) follows
    plan[k-1] when the test gave one, else `default`, each a dict of
    DEFAULT's keys (missing keys: DEFAULT). Both may be changed while it
    runs ("the server heals")."""

    def __init__(self, host, port, name="fault.test", plan=None, **default):
        assert host.startswith("127."), host
        self.host, self.port, self.name = host, port, name
        self.plan = list(plan or [])
        self.default = dict(default)
        self.connections = 0
        self.transactions = []      # every Transaction, in order
        self.events = []            # (time, conn, what) for the tests' diagnostics
        self.holding = threading.Event()
        self._release = None
        self._loop = None
        self._server = None
        self._thread = None
        self._tasks = set()

    # ---- what happened
    @property
    def delivered(self):
        """Transactions answered with a 2xx after the data."""
        return [t for t in self.transactions if t.reply and t.reply.startswith("2")]

    def delivered_with(self, marker):
        m = marker.encode() if isinstance(marker, str) else marker
        return [t for t in self.delivered if m in t.data]

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        return pred()

    # ---- life
    def start(self):
        ready = threading.Event()
        err = []

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._release = asyncio.Event()

            async def listen():
                self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                          reuse_address=True)
            try:
                self._loop.run_until_complete(listen())
            except OSError as e:
                err.append(e)
                ready.set()
                self._loop.close()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"fault-smtp-{self.host}")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault server did not start")
        if err:
            raise err[0]
        return self

    def release(self):
        """Let held DATA replies go (answered with the `data` reply)."""
        self._loop.call_soon_threadsafe(self._release.set)

    def close(self):
        if self._loop is None or self._thread is None:
            return

        async def shut():
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

        fut = asyncio.run_coroutine_threadsafe(shut(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- one connection
    def _behaviour(self, n):
        b = dict(DEFAULT)
        b.update(self.plan[n - 1] if n <= len(self.plan) else self.default)
        return b

    def _note(self, n, what):
        self.events.append((time.monotonic(), n, what))

    async def _serve(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        n = self.connections
        b = self._behaviour(n)
        self._note(n, "connect")
        try:
            await self._session(n, b, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            self._note(n, f"lost: {e!r}")
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _session(self, n, b, reader, writer):
        def say(line):
            writer.write(line.format(name=self.name, n=f"{n}.{len(self.transactions)}").encode()
                         + b"\r\n")

        if b["banner"] is None:
            self._note(n, "silent")
            await reader.read()        # until the client gives up
            self._note(n, "client closed")
            return
        say(b["banner"])
        await writer.drain()
        if not b["banner"].startswith("2"):
            self._note(n, "banner refused")
            return
        helo, tx = None, None
        while True:
            line = await reader.readline()
            if not line:
                self._note(n, "client closed")
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].upper()
            arg = cmd[len(verb):].strip()
            if verb == "EHLO":
                helo = arg
                lines = [self.name] + list(b["ehlo"])
                for i, ext in enumerate(lines):
                    say(f"250{'-' if i < len(lines) - 1 else ' '}{ext}")
            elif verb == "HELO":
                helo = arg
                say(f"250 {self.name}")
            elif verb == "MAIL":
                tx = Transaction(n, helo, arg)
                say(b["mail"])
                if not b["mail"].startswith("2"):
                    tx = None
            elif verb == "RCPT":
                if tx is None:
                    say("503 5.5.1 MAIL first")
                    continue
                addr = arg.split(":", 1)[-1].strip().split(" ")[0].strip("<>")
                r = b["rcpt"](addr) if callable(b["rcpt"]) else b["rcpt"]
                if r.startswith("2"):
                    tx.rcpts.append(addr)
                else:
                    tx.refused.append((addr, r))
                say(r)
            elif verb == "DATA":
                if tx is None or not tx.rcpts:
                    say("554 5.5.1 no valid recipients")
                    continue
                self.transactions.append(tx)
                say("354 go ahead")
                await writer.drain()
                if not await self._data(n, b, tx, reader):
                    return
                if b["hold_data"]:
                    self._note(n, "holding the DATA reply")
                    self.holding.set()
                    eof = asyncio.ensure_future(reader.read())
                    rel = asyncio.ensure_future(self._release.wait())
                    await asyncio.wait({eof, rel}, return_when=asyncio.FIRST_COMPLETED)
                    left = eof.done()      # EOF or reset: the client is gone
                    for f in (eof, rel):
                        if not f.done():
                            f.cancel()
                    await asyncio.gather(eof, rel, return_exceptions=True)
                    if left:
                        self._note(n, "client left while the DATA reply was held")
                        return
                tx.reply = b["data"].format(name=self.name, n=f"{n}.{len(self.transactions)}")
                say(tx.reply)
                tx = None
            elif verb == "RSET":
                tx = None
                say("250 2.0.0 ok")
            elif verb == "NOOP":
                say("250 2.0.0 ok")
            elif verb == "QUIT":
                say("221 2.0.0 bye")
                await writer.drain()
                return
            elif verb == "STARTTLS":
                say("502 5.5.1 not offered")
            else:
                say("500 5.5.2 unknown command")
            await writer.drain()

    async def _data(self, n, b, tx, reader):
        """Reads the message to the final dot; False when the connection
        was dropped on purpose (or lost) before it."""
        got = bytearray()
        while True:
            line = await reader.readline()
            if not line:
                self._note(n, "client closed in DATA")
                return False
            if line in (b".\r\n", b".\n"):
                tx.data = bytes(got)
                return True
            got += line[1:] if line.startswith(b".") else line
            if b["drop_data_after"] is not None and len(got) >= b["drop_data_after"]:
                self._note(n, f"dropping the connection after {len(got)} bytes of DATA")
                return False
