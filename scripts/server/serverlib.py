"""What the server scripts share: a free loopback port, a server process started with its log
in a file (a pipe nobody reads fills at 64 KiB and blocks a verbose server before it listens),
waiting for it to listen, its RSS, its /metrics text, and reading an SSE stream. Standard
library only."""
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start(cmd, env=None):
    """Starts a server; its stderr goes to a temporary file kept as `proc.log`."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    proc.log = log
    return proc


def wait_listening(port, proc, what, seconds=120):
    """Returns once `port` accepts a connection; exits with the server's log if it died."""
    stop_at = time.time() + seconds
    while time.time() < stop_at:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                proc.log.seek(0)
                sys.exit(f"{what} exited: " + proc.log.read().decode(errors="replace")[-4000:])
            time.sleep(0.1)
    sys.exit(f"{what} did not start listening within {seconds} s")


def metrics(port):
    """The text of the server's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return text


class TruncatedStream(Exception):
    """The server closed an SSE stream before its `data: [DONE]`."""


def sse_events(resp):
    """The JSON events of an OpenAI-style SSE response, in order; returns at `data: [DONE]`,
    raises TruncatedStream when the stream ends before it."""
    while True:
        line = resp.readline()
        if not line:
            raise TruncatedStream()
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        if line[6:] == b"[DONE]":
            return
        yield json.loads(line[6:])
