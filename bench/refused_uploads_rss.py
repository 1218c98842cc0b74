#!/usr/bin/env python3
"""RSS of a real node across refused plugin uploads (issue 15; docs/reliability.md,
"Refused uploads and the node's memory").

Starts `switchboard dev` (compiles in its child process, as a node does) on a fresh data
dir, uploads variants of `hostile-trap` (each a new version: a custom section appended), all
refused by the self-test with 422, one at a time over the admin API, and prints the node's
VmRSS after a warm-up and after each batch.

    python3 bench/refused_uploads_rss.py BINARY HOSTILE_TRAP_WASM [BATCHES] [PER_BATCH]

BINARY is a built `switchboard`; the wasm is `plugins_artifacts::HOSTILE_TRAP`'s file
(under the target dir's `plugins-artifacts/`). Only the standard library is used.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

WARM_UP = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant(wasm, n):
    name = b"variant"
    payload = n.to_bytes(4, "little")
    size = 1 + len(name) + len(payload)
    return wasm + bytes([0, size, len(name)]) + name + payload


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def upload(admin, token, body):
    req = urllib.request.Request(
        f"{admin}/v1/tenants/demo/plugins",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/wasm"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    binary, wasm_path = sys.argv[1], sys.argv[2]
    batches = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    per_batch = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    wasm = open(wasm_path, "rb").read()
    data = tempfile.mkdtemp(prefix="rss-")
    admin_port = free_port()
    token = "rss-measurement-admin-token-0123456789"
    env = dict(os.environ, SWITCHBOARD_ADMIN_TOKEN=token, RUST_LOG="warn")
    node = subprocess.Popen(
        [binary, "dev", "--data-dir", data,
         "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{admin_port}",
         "--webtransport-listen", f"127.0.0.1:{free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{admin}/healthz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        n = 0
        for _ in range(WARM_UP):
            n += 1
            assert upload(admin, token, variant(wasm, n)) == 422
        time.sleep(1)
        base = rss_kib(node.pid)
        print(f"after {WARM_UP} warm-up refusals: {base / 1024:.1f} MiB", flush=True)
        started = time.time()
        for b in range(1, batches + 1):
            for _ in range(per_batch):
                n += 1
                status = upload(admin, token, variant(wasm, n))
                assert status == 422, f"upload {n}: {status}"
            time.sleep(1)
            rss = rss_kib(node.pid)
            print(f"after {b * per_batch} more: {rss / 1024:.1f} MiB "
                  f"({(rss - base) * 100 / base:+.1f} %), {time.time() - started:.0f} s",
                  flush=True)
        artifacts = [f for f in os.listdir(os.path.join(data, "artifacts"))
                     if f.endswith(".cwasm")]
        print(f"artifacts on disk: {len(artifacts)}")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
