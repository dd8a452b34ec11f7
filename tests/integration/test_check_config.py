"""`ternd --check-config FILE`: exit 0 on a good file; exit 1 with every
error at once, each as `path: message`, on a bad one. Also: ternd refuses
to start on a bad file, and --version."""

import re
import subprocess

import pytest

from conftest import TERND, Quoted, check_config, free_ports, merge, to_yaml


@pytest.fixture
def cfg(tern_factory):
    t = tern_factory(start=False)
    return t


def errors_for(t, config=None, text=None):
    path = t.dir / "check.yaml"
    path.write_text(text if text is not None else to_yaml(config))
    rc, out, err = check_config(path)
    return rc, err, out


def has_error(err, prefix, *words):
    # `path: message`, optionally after the file's name (`FILE: path: message`)
    rx = re.compile(rf"^(\S+\.yaml: )?{re.escape(prefix)}[\w\[\].-]*: \S")
    for line in err.splitlines():
        if rx.search(line) and all(w.lower() in line.lower() for w in words):
            return True
    return False


def test_good_config(cfg):
    rc, err, out = errors_for(cfg, cfg.config)
    assert rc == 0, err


def test_minimal_config(cfg):
    port = free_ports(1)[0]
    text = (f"server: {{state_dir: \"{cfg.state_dir}\"}}\ndomains: [example.test]\n"
            f"listeners:\n  - {{name: mx, protocol: smtp, address: 127.0.0.1, port: {port}}}\n")
    rc, err, _ = errors_for(cfg, text=text)
    assert rc == 0, err


def test_three_errors_at_once(cfg):
    c = merge(cfg.config, {"smtp": {"max_recipient": 5},
                           "tls": {"protocols": {"min_version": Quoted("1.3")}}})
    c["listeners"][1]["port"] = c["listeners"][0]["port"]
    rc, err, _ = errors_for(cfg, c)
    assert rc == 1, err
    assert has_error(err, "smtp.max_recipient", "max_recipients"), err   # the suggestion
    assert has_error(err, "listeners[", "port"), err
    assert has_error(err, "tls.protocols.min_version", "1.2"), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) >= 3, err


def listener_change(i, **kw):
    def f(c):
        c["listeners"][i].update(kw)
    return f


def setp(path, value):
    def f(c):
        d = c
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = value
    return f


CASES = {
    "unknown-top-level": (setp(["listner"], []), "listner", ["listeners"]),
    "unknown-key": (setp(["server", "hostnmae"], "x"), "server.hostnmae", ["hostname"]),
    "protocol": (listener_change(0, protocol="smtps"), "listeners[0].protocol", []),
    "port-range": (listener_change(0, port=70000), "listeners[0].port", []),
    "duration": (setp(["server", "shutdown_grace"], "5 minutes"), "server.shutdown_grace", []),
    "size": (setp(["smtp", "max_message_size"], "10 MB"), "smtp.max_message_size", []),
    "bound": (setp(["smtp", "max_recipients"], 0), "smtp.max_recipients", []),
    "cidr": (setp(["smtp", "relay_networks"], ["300.0.0.0/8"]), "smtp.relay_networks", []),
    "bare-lf": (setp(["smtp", "bare_lf"], "maybe"), "smtp.bare_lf", []),
    "log-level": (setp(["server", "log_level"], "loud"), "server.log_level", []),
    "min-version-1.3": (setp(["tls", "protocols", "min_version"], Quoted("1.3")),
                        "tls.protocols.min_version", ["1.2"]),
    "cert-missing": (setp(["tls", "certificates", "main", "cert"], "/nonexistent/cert.pem"),
                     "tls.certificates.main.cert", []),
    "key-missing": (setp(["tls", "certificates", "main", "key"], "/nonexistent/key.pem"),
                    "tls.certificates.main.key", []),
    "duplicate-name": (listener_change(1, name="mx"), "listeners[1].name", []),
    "plaintext-auth": (listener_change(1, tls="none"), "listeners[1]", ["allow_plaintext_auth"]),
    "client-cert-without-ca": (listener_change(2, tls={"mode": "implicit",
                                                       "client_cert": "required"}),
                               "listeners[2].tls", []),
    "wrong-type": (setp(["domains"], "example.test"), "domains", []),
    "send-as-not-address": (setp(["smtp", "send_as"], [{"account": "alice",
                                                          "addresses": ["a@example.test"]}]),
                            "smtp.send_as[0].account", []),
    "send-as-bad-address": (setp(["smtp", "send_as"], [{"account": "alice@example.test",
                                                          "addresses": ["a b@example.test"]}]),
                            "smtp.send_as[0].addresses", []),
    "send-as-empty": (setp(["smtp", "send_as"], [{"account": "alice@example.test",
                                                    "addresses": []}]),
                      "smtp.send_as[0]", ["at least one"]),
    "send-as-twice": (setp(["smtp", "send_as"], [
        {"account": "alice@example.test", "addresses": ["a@example.test"]},
        {"account": "Alice@example.test", "addresses": ["b@example.test"]}]),
        "smtp.send_as[1]", ["merge"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_names_path(cfg, name):
    change, prefix, words = CASES[name]
    c = merge(cfg.config, {})
    change(c)
    rc, err, _ = errors_for(cfg, c)
    assert rc == 1, f"accepted:\n{to_yaml(c)}\n{err}"
    assert has_error(err, prefix, *words), f"no `{prefix}...: message` line in:\n{err}"


def test_key_does_not_match_cert(cfg, certs):
    c = merge(cfg.config, {"tls": {"certificates": {"main": {"key": certs.path("stray.key")}}}})
    rc, err, _ = errors_for(cfg, c)
    assert rc == 1
    assert has_error(err, "tls.certificates.main"), err


def test_two_default_certificates(cfg, certs):
    c = merge(cfg.config, {"tls": {"certificates": {"other": {
        "cert": certs.path("other.crt"), "key": certs.path("other.key"), "default": True}}}})
    rc, err, _ = errors_for(cfg, c)
    assert rc == 1
    assert has_error(err, "tls.certificates"), err


def test_plaintext_auth_allowed_when_said(cfg):
    c = merge(cfg.config, {})
    c["listeners"][1].update(tls="none", allow_plaintext_auth=True)
    rc, err, _ = errors_for(cfg, c)
    assert rc == 0, err


def test_yaml_syntax_error(cfg):
    rc, err, _ = errors_for(cfg, text="server:\n  hostname: [a\n")
    assert rc == 1
    assert err.strip(), "no message for a YAML syntax error"


def test_missing_file(cfg):
    rc, out, err = check_config(cfg.dir / "nope.yaml")
    assert rc == 1 and err.strip()


def test_ternd_refuses_bad_config(cfg):
    c = merge(cfg.config, {"smtp": {"max_recipient": 5}})
    cfg.write_config(c)
    p = subprocess.run([str(TERND), "-c", str(cfg.conf_path)], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert b"max_recipient" in p.stderr


def test_version():
    p = subprocess.run([str(TERND), "--version"], capture_output=True, timeout=30)
    assert p.returncode == 0
    assert re.search(rb"\d+\.\d+\.\d+", p.stdout + p.stderr), p
