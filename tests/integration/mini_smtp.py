"""A small scriptable SMTP receiver for the client tests: it offers exactly
the EHLO extensions it is told (so a test can take 8BITMIME, CHUNKING or
PIPELINING away), records every connection, command and message, and can
misbehave on purpose (close the connection when it sees RSET). It speaks
just enough of RFC 5321/3030 for ternd's client; loopback only."""

import base64
import socket
import threading


class MiniSMTP:
    def __init__(self, extensions=("PIPELINING", "8BITMIME", "SIZE 10000000"),
                 close_on_rset=0, timeout=30.0):
        self.extensions = list(extensions)
        self.close_on_rset = close_on_rset  # this many RSETs are answered by a close
        self.timeout = timeout
        self.lock = threading.Lock()
        self.connections = []   # peer addresses, one per connection
        self.commands = []      # (connection number, command line)
        self.messages = []      # dicts: conn, mail_from, rcpts, data, via
        self.logins = []        # (mechanism, username, password) as received
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def stop(self):
        self.stopping = True
        self.acceptor.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)

    def _accept(self):
        while not self.stopping:
            try:
                s, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections.append(addr[0])
                n = len(self.connections)
            t = threading.Thread(target=self._serve, args=(s, n), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, s, n):
        s.settimeout(self.timeout)
        f = s.makefile("rb")
        try:
            self._session(s, f, n)
        except (OSError, ValueError):
            pass
        finally:
            f.close()
            s.close()

    def _session(self, s, f, n):
        def send(line):
            s.sendall(line.encode() + b"\r\n")

        send("220 mini.test ESMTP")
        mail_from, rcpts = None, []
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            with self.lock:
                self.commands.append((n, cmd))
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                exts = ["mini.test"] + self.extensions
                for i, e in enumerate(exts):
                    send(("250 " if i == len(exts) - 1 else "250-") + e)
            elif verb == "AUTH":
                parts = cmd.split()
                mech = parts[1].upper() if len(parts) > 1 else ""
                if mech == "PLAIN" and len(parts) == 3:
                    _, user, pw = base64.b64decode(parts[2]).split(b"\0")
                elif mech == "LOGIN":
                    send("334 VXNlcm5hbWU6")
                    user = base64.b64decode(f.readline().strip())
                    send("334 UGFzc3dvcmQ6")
                    pw = base64.b64decode(f.readline().strip())
                else:
                    send("504 5.5.4 unknown mechanism")
                    continue
                with self.lock:
                    self.logins.append((mech, user.decode(), pw.decode()))
                send("235 2.7.0 ok")
            elif verb == "HELO":
                send("250 mini.test")
            elif verb == "MAIL":
                mail_from, rcpts = cmd[10:].split(">")[0].lstrip("<"), []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:].split(">")[0].lstrip("<"))
                send("250 2.1.5 ok")
            elif verb == "RSET":
                with self.lock:
                    drop = self.close_on_rset > 0
                    if drop:
                        self.close_on_rset -= 1
                if drop:
                    s.shutdown(socket.SHUT_RDWR)
                    return
                mail_from, rcpts = None, []
                send("250 2.0.0 ok")
            elif verb == "DATA":
                send("354 go ahead")
                data = b""
                while True:
                    l = f.readline()
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b".") else l
                self._stored(n, mail_from, rcpts, data, "DATA")
                send("250 2.0.0 stored")
            elif verb == "BDAT":
                parts = cmd.split()
                size = int(parts[1])
                data = f.read(size)
                if len(data) != size:
                    return
                if len(parts) > 2 and parts[2].upper() == "LAST":
                    self._stored(n, mail_from, rcpts, data, "BDAT")
                    send("250 2.0.0 stored")
                else:
                    send("250 2.0.0 chunk")  # one-chunk client: not used
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("502 5.5.2 not here")

    def _stored(self, n, mail_from, rcpts, data, via):
        with self.lock:
            self.messages.append({"conn": n, "mail_from": mail_from, "rcpts": list(rcpts),
                                  "data": data, "via": via})
