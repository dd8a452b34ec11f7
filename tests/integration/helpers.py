"""Helpers shared by the integration tests: reading what the spool holds
through ternctl. Trusts: nothing; ternctl output is searched, not parsed by
position, so its layout can change without breaking these checks."""

import re


def received_headers(show):
    """The Received header fields in `ternctl spool show` output, unfolded,
    in order of appearance."""
    text = show.decode("utf-8", "replace").replace("\r\n", "\n")
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if re.match(r"(?i)^received:", lines[i]):
            field = lines[i]
            i += 1
            while i < len(lines) and lines[i][:1] in (" ", "\t"):
                field += " " + lines[i].strip()
                i += 1
            out.append(field)
        else:
            i += 1
    return out


def contains_message(show, message):
    """Whether the stored message bytes appear in the show output (as stored
    with CRLF, or displayed with LF)."""
    return message in show or message.replace(b"\r\n", b"\n") in show


def index_of(show, needle):
    for hay, nd in ((show, needle), (show.replace(b"\r\n", b"\n"), needle.replace(b"\r\n", b"\n"))):
        i = hay.find(nd)
        if i >= 0:
            return i
    return -1


def cipher_matches(openssl_name, header):
    """Whether an OpenSSL cipher name (ECDHE-RSA-AES256-GCM-SHA384) is named
    in a header that may use the IANA/mbedTLS spelling
    (TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384)."""
    norm = re.sub(r"[^A-Z0-9]", "", header.upper())
    for tok in openssl_name.upper().split("-"):
        m = re.match(r"^(AES|CAMELLIA|ARIA)(\d+)$", tok)
        parts = [m.group(1), m.group(2)] if m else [tok]
        for p in parts:
            if p not in norm:
                return False
    return True
