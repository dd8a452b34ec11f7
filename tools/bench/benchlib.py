"""tools/bench/benchlib.py: what the Python benchmarks in tools/bench share:
where the build and Postfix's tools are, free loopback ports, waiting for a
listener, a ternd started on a config, a private Postfix instance in a temp
dir, and the clean-up that stops them whatever happens.

It trusts its callers (the bench scripts next to it) and the local machine;
it binds and connects to 127.0.0.1 only. Every wait is bounded.
"""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_b = Path(os.environ.get("TERN_BUILD", "build"))
BUILD = _b if _b.is_absolute() else ROOT / _b
TERND = BUILD / "server" / "ternd"
TERNCTL = BUILD / "tools" / "ternctl"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
DOMAIN = "example.test"
STEP_TIMEOUT = 600


def die(msg):
    print(f"{Path(sys.argv[0]).name}: {msg}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=30):
    """True once something listens on 127.0.0.1:port (read from
    /proc/net/tcp, so that probing does not count as a connection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                p = line.split()
                if p[3] == "0A" and int(p[1].rsplit(":", 1)[1], 16) == port:
                    return True
        time.sleep(0.05)
    return False


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n)) if hard != resource.RLIM_INFINITY else max(soft, n)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def proc_status_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def vmrss_kib(pid):
    return proc_status_kib(pid, "VmRSS")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        # the command name is in parentheses and may hold spaces
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid, tree=False):
    """User+system CPU of a process (all its threads); with tree, also of
    its live descendants and of the children they have reaped (cutime,
    cstime), which is how a Postfix master's short-lived daemons count."""
    tick = os.sysconf("SC_CLK_TCK")
    if not tree:
        f = _stat_fields(pid)
        return (int(f[11]) + int(f[12])) / tick
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(_stat_fields(d)[1]), []).append(int(d))
            except (OSError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo += kids.get(p, [])
    return total / tick


def disk_flushes(path):
    """Cache flushes completed by the block device holding path (every
    fsync on a filesystem without a journal is one), from
    /sys/dev/block/M:m/stat; None when the kernel does not report them.
    The device is shared: other processes' flushes count too."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        with open(f"/sys/dev/block/{dev}/stat") as f:
            v = f.read().split()
        return int(v[15]) if len(v) >= 17 else None
    except OSError:
        return None


class Cleanup:
    """Everything started, stopped at the end even on an error or ^C."""

    def __init__(self):
        self.procs = []
        self.postfix_dirs = []

    def run(self):
        for d in self.postfix_dirs:
            subprocess.run([POSTFIX, "-c", str(d), "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        self.postfix_dirs = []
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)


def check_tools(need_root):
    missing = [str(x) for x in (TERND, TERNCTL) if not Path(x).exists()]
    missing += [x for x in (SMTP_SOURCE, SMTP_SINK, POSTFIX) if not Path(x).exists()]
    if missing:
        die("missing " + ", ".join(missing) + ": run tools/setup first (it installs "
            "postfix and builds ternd)")
    if need_root and os.geteuid() != 0:
        die("run as root: Postfix's master needs it (or leave postfix out with --only)")


# ------------------------------------------------------------------ ternd

def ternd_base_config(tmp, port, max_connections=10000, log_level="info"):
    """The YAML shared by the benchmarks: one plain SMTP listener on
    127.0.0.1, no per-IP limits (every client is 127.0.0.1), the spool and
    the store with their default fsync behaviour. Callers append blocks."""
    state = tmp / "state"
    state.mkdir(parents=True, exist_ok=True)
    text = f"""server:
  hostname: bench.example.test
  state_dir: "{state}"
  log_level: {log_level}
  max_connections: {max_connections}
  shutdown_grace: 5s
limits:
  max_connections_per_ip: 0
  connection_rate_per_ip: 0
domains: [{DOMAIN}]
listeners:
  - name: mx
    protocol: smtp
    address: 127.0.0.1
    port: {port}
"""
    return text, state


def ternctl(conf, *args):
    subprocess.run([str(TERNCTL), "-c", str(conf), *args], check=True, timeout=60,
                   stdout=subprocess.DEVNULL)


def start_ternd(conf, log_path, port, cleanup, nofile=4096, env=None):
    log = open(log_path, "ab")

    def pre():
        raise_nofile(nofile)

    p = subprocess.Popen([str(TERND), "-c", str(conf)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, preexec_fn=pre,
                         env=dict(os.environ, **(env or {})))
    log.close()
    cleanup.procs.append(p)
    if not wait_port(port, p):
        die(f"ternd did not start; see {log_path}:\n"
            + Path(log_path).read_text(errors="replace")[-3000:])
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


# ------------------------------------------------------------------ postfix

# The services any private Postfix needs; callers add smtpd and agents.
POSTFIX_MASTER_CF = """pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_version():
    return subprocess.run([POSTCONF, "-dh", "mail_version"], capture_output=True,
                          text=True, timeout=60).stdout.strip()


def start_postfix(tmp, port, sessions, cleanup, settings, master_extra="", title=""):
    """A private Postfix: its own config_directory and queue_directory under
    tmp, smtpd on 127.0.0.1:port, per-client limits and in_flow_delay off,
    logging to tmp/postfix/maillog. `settings` (main.cf) and `master_extra`
    (master.cf lines) say what it does with the mail. Returns (etc, queue)."""
    etc = tmp / "postfix" / "etc"
    queue = tmp / "postfix" / "queue"
    data = tmp / "postfix" / "data"
    for d in (etc, queue, data):
        d.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, "postfix")
    (etc / "master.cf").write_text(
        f"# {title}: a private Postfix instance\n"
        f"127.0.0.1:{port} inet n - n - - smtpd\n" + POSTFIX_MASTER_CF + master_extra)
    (etc / "main.cf").write_text(f"# {title}: private Postfix instance\n")
    # dynamicmaps.cf: Debian's postfix loads map types from it
    src = Path("/etc/postfix") / "dynamicmaps.cf"
    if src.exists():
        shutil.copy(src, etc / "dynamicmaps.cf")
    dyn = Path("/etc/postfix/dynamicmaps.cf.d")
    if dyn.is_dir():
        shutil.copytree(dyn, etc / "dynamicmaps.cf.d", dirs_exist_ok=True)
    base = {
        "compatibility_level": "3.6",
        "queue_directory": str(queue),
        "data_directory": str(data),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "postfix.example.test",
        "mydomain": DOMAIN,
        "myorigin": DOMAIN,
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "alias_maps": "",
        "alias_database": "",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
        "smtpd_client_message_rate_limit": "0",
        "smtpd_peername_lookup": "no",
        "in_flow_delay": "0",
        "default_process_limit": str(max(100, sessions + 20)),
        "smtpd_banner": "$myhostname ESMTP",
        "biff": "no",
        "append_dot_mydomain": "no",
        "maillog_file": str(tmp / "postfix" / "maillog"),
        "maillog_file_prefixes": str(tmp),
        "meta_directory": "/etc/postfix",
    }
    base.update(settings)
    args = [POSTCONF, "-c", str(etc), "-e"] + [f"{k}={v}" for k, v in base.items()]
    subprocess.run(args, check=True, timeout=60)
    subprocess.run([POSTFIX, "-c", str(etc), "set-permissions"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    cleanup.postfix_dirs.append(etc)
    r = subprocess.run([POSTFIX, "-c", str(etc), "start"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0 or not wait_port(port):
        # Postfix reports to its log only (stderr when it is a terminal)
        log = tmp / "postfix" / "maillog"
        die("postfix did not start:\n" + r.stdout + r.stderr
            + (log.read_text(errors="replace")[-3000:] if log.exists() else "")
            + f"\n(try: script -qc 'postfix -c {etc} check' /dev/null)")
    return etc, queue


def stop_postfix(etc, cleanup):
    subprocess.run([POSTFIX, "-c", str(etc), "stop"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    if etc in cleanup.postfix_dirs:
        cleanup.postfix_dirs.remove(etc)


def make_tmp(prefix="tern-bench."):
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    # Postfix's daemons and the virtual agent's uid walk through it
    os.chmod(tmp, 0o755)
    return tmp
