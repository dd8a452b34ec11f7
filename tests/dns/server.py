#!/usr/bin/python3
"""A small authoritative DNS server for the tests: serves the records of
zone files (zone-file syntax, read with python3-dnslib) over UDP and TCP on
127.0.0.1 at a free port, which it prints as the first line of stdout.

Behaviour the resolver tests need:
  * names in the zone answer their records (CNAMEs are followed within the
    zone); a name that exists without the asked type answers NOERROR with
    no records and the SOA in the authority section (NODATA);
  * a name under a served zone (an SOA owner) that is not in the zone
    answers NXDOMAIN; names outside every zone are REFUSED;
  * --silent NAME: queries for NAME (and names under it) get no answer at
    all, for the timeout tests; --servfail NAME answers SERVFAIL;
  * a zone signed beforehand (ldns-signzone) is served with its RRSIGs
    when the query sets the DO bit: answers carry the RRSIGs of their
    RRsets, NODATA carries the NSEC of the name and the SOA's RRSIG
    (signed NXDOMAIN proofs are not implemented);
  * answers larger than the query's EDNS buffer (512 without EDNS) are
    sent truncated (TC, no records), so the resolver retries over TCP;
  * every query is written to --log as "QTYPE qname" (one line each), so a
    test can count what reached the server (the cache test).

It stops by itself after --lifetime seconds, or when stdin closes.
Input: untrusted UDP/TCP queries from loopback only; a query that does not
parse is dropped."""

import argparse
import socket
import socketserver
import struct
import sys
import threading
import time

from dnslib import DNSRecord, EDNS0, QTYPE, RCODE, RR, DNSLabel


def load_zones(paths, origin):
    rrs = []
    for path in paths:
        text = open(path, encoding="utf-8").read()
        if "$ORIGIN" not in text:
            text = "$ORIGIN %s\n" % origin + text
        rrs += RR.fromZone(text)
    return rrs


def edns(request):
    """(udp size, DO bit) of the query; (None, False) without EDNS."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, rr.rclass), bool(rr.ttl & 0x8000)
    return None, False


class Zone:
    def __init__(self, rrs, silent, servfail):
        self.rrs = rrs
        # The zones served are the owners of the SOA records.
        self.apexes = [rr.rname for rr in rrs if rr.rtype == QTYPE.SOA]
        self.silent = [DNSLabel(n) for n in silent]
        self.servfail = [DNSLabel(n) for n in servfail]

    def soa_for(self, name):
        best = None
        for rr in self.rrs:
            if rr.rtype == QTYPE.SOA and name.matchSuffix(rr.rname):
                if best is None or len(rr.rname.label) > len(best.rname.label):
                    best = rr
        return [best] if best else []

    def sigs(self, name, rtype):
        return [rr for rr in self.rrs
                if rr.rtype == QTYPE.RRSIG and rr.rname == name and rr.rdata.covered == rtype]

    def add(self, section, rrs, dnssec):
        for rr in rrs:
            section(rr)
            if dnssec:
                for sig in self.sigs(rr.rname, rr.rtype):
                    section(sig)

    def answer(self, request, dnssec=False):
        """The reply to a parsed request, or None to stay silent."""
        q = request.q
        qname, qtype = q.qname, q.qtype
        if any(qname.matchSuffix(s) for s in self.silent):
            return None
        reply = request.reply()
        if any(qname.matchSuffix(s) for s in self.servfail):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if not any(qname.matchSuffix(a) for a in self.apexes):
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
            return reply
        name = qname
        for _ in range(8):  # CNAME chain within the zone
            found = [rr for rr in self.rrs if rr.rname == name]
            if not found:
                if name == qname:
                    reply.header.rcode = RCODE.NXDOMAIN
                    for soa in self.soa_for(qname):
                        reply.add_auth(soa)
                return reply
            exact = [rr for rr in found if rr.rtype == qtype or qtype == QTYPE.ANY]
            if exact:
                self.add(reply.add_answer, exact, dnssec)
                return reply
            cname = [rr for rr in found if rr.rtype == QTYPE.CNAME]
            if not cname:
                self.add(reply.add_auth, self.soa_for(name), dnssec)
                self.add(reply.add_auth, [rr for rr in found if rr.rtype == QTYPE.NSEC], dnssec)
                return reply
            self.add(reply.add_answer, cname[:1], dnssec)
            name = cname[0].rdata.label
        return reply


class State:
    def __init__(self, zone, log):
        self.zone = zone
        self.log = log
        self.lock = threading.Lock()

    def handle(self, data, udp=True):
        """The reply's wire form, or None to stay silent."""
        try:
            request = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - any malformed query is dropped
            return None
        if self.log:
            with self.lock:
                self.log.write("%s %s\n" % (QTYPE.get(request.q.qtype), str(request.q.qname).lower()))
                self.log.flush()
        size, dnssec = edns(request)
        reply = self.zone.answer(request, dnssec)
        if reply is None:
            return None
        if size is not None:
            reply.add_ar(EDNS0(flags="do" if dnssec else "", udp_len=1232))
        wire = reply.pack()
        if udp and len(wire) > min(size or 512, 1232):
            short = request.reply()
            short.header.rcode = reply.header.rcode
            short.header.tc = 1
            wire = short.pack()
        return wire


class UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        wire = self.server.state.handle(data)
        if wire is not None:
            sock.sendto(wire, self.client_address)


class TCPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        try:
            head = self.request.recv(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack("!H", head)
            data = b""
            while len(data) < n:
                chunk = self.request.recv(n - len(data))
                if not chunk:
                    return
                data += chunk
            wire = self.server.state.handle(data, udp=False)
            if wire is None:
                return
            self.request.sendall(struct.pack("!H", len(wire)) + wire)
        except OSError:
            return


class UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def bind_pair(host):
    """A UDP and a TCP server on the same free port."""
    for _ in range(50):
        udp = UDPServer((host, 0), UDPHandler)
        port = udp.server_address[1]
        try:
            tcp = TCPServer((host, port), TCPHandler)
        except OSError:
            udp.server_close()
            continue
        return udp, tcp, port
    raise SystemExit("server.py: no free port pair")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zone", nargs="+")
    ap.add_argument("--origin", default="example.test.",
                    help="$ORIGIN for relative names when the file sets none")
    ap.add_argument("--silent", action="append", default=[])
    ap.add_argument("--servfail", action="append", default=[])
    ap.add_argument("--log")
    ap.add_argument("--lifetime", type=float, default=120.0)
    args = ap.parse_args()
    zone = Zone(load_zones(args.zone, args.origin), args.silent, args.servfail)
    log = open(args.log, "a", encoding="utf-8") if args.log else None
    state = State(zone, log)
    udp, tcp, port = bind_pair("127.0.0.1")
    udp.state = tcp.state = state
    for srv in (udp, tcp):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(port, flush=True)

    # Stop when the lifetime is over or when the parent closes our stdin.
    def watch_stdin():
        try:
            sys.stdin.read()
        except (OSError, ValueError):
            return
        done.set()

    done = threading.Event()
    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait(args.lifetime)
    udp.shutdown()
    tcp.shutdown()
    udp.server_close()
    tcp.server_close()


if __name__ == "__main__":
    main()
