"""A server as a child process: started offline, waited for until it answers, stopped afterwards. For the scripts
that measure a server (benchmarks/bench_serving.py) and the tests that talk to one (tinygpt serve, the playground,
the browser page), so all start and stop servers one way. Not part of the installed package: the tests find it
through pytest's `pythonpath`, a benchmark beside it.

    port = free_port()
    for _ in running_server(["tinygpt", "serve", "runs/cpu", "--port", str(port)], f"http://127.0.0.1:{port}/health"):
        ...  # the server answers here; it is stopped when the loop ends
"""

import os
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port() -> int:
    """A TCP port that nothing on this machine listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running_server(command, url: str, env=None, cwd=None, timeout: float = 120):
    """Start `command` offline, wait (at most `timeout` seconds) until `url` answers, yield the process, and stop it
    afterwards. A server that exits or does not answer in time raises RuntimeError with the end of its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
    server = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                log.seek(0)
                raise RuntimeError(f"the server did not start: {log.read()[-3000:]}") from None
            time.sleep(0.5)
    try:
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
