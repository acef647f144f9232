#!/usr/bin/env python3
"""py <-> py self-test of Interop/peer.py on loopback.

    Interop/.venv/bin/python Interop/selftest.py

Starts one `peer.py listen` process, runs every dial test against it (each in
its own `peer.py dial` process), checks the JSON lines on both sides, then
closes the listener's stdin and checks that it exits 0 by itself.  Every
subprocess runs under a timeout.  Exit status 0 = all passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
PY = sys.executable
MiB = 1024 * 1024

LISTEN_SEED = 1
DIAL_SEED = 2

TESTS = [
    ("ping", ["--test", "ping", "--count", "5"]),
    ("identify", ["--test", "identify"]),
    ("echo 1 MiB x 4", ["--test", "echo", "--size", str(MiB), "--streams", "4"]),
    ("echo 16 MiB x 1", ["--test", "echo", "--size", str(16 * MiB), "--streams", "1"]),
    ("echo 0 B x 2", ["--test", "echo", "--size", "0", "--streams", "2"]),
    ("perf 16 MiB up / 16 MiB down",
     ["--test", "perf", "--upload", str(16 * MiB), "--download", str(16 * MiB)]),
    ("perf 0 up / 1 MiB down", ["--test", "perf", "--upload", "0", "--download", str(MiB)]),
]


def peer_id(seed: int) -> str:
    out = subprocess.run([PY, PEER, "id", "--seed", str(seed)], capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout.strip()


def main() -> int:
    failures = 0
    assert peer_id(1) == "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
    assert peer_id(0) == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    dial_id = peer_id(DIAL_SEED)

    listener = subprocess.Popen(
        [PY, PEER, "listen", "--seed", str(LISTEN_SEED), "--lifetime", "300"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
    )
    killer = threading.Timer(320, listener.kill)
    killer.daemon = True
    killer.start()
    lines: list[str] = []
    first = listener.stdout.readline().strip()
    if not first.startswith("LISTEN "):
        print(f"FAIL: listener said {first!r}")
        listener.kill()
        return 1
    addr = first.split(" ", 1)[1]
    print(f"listener: {addr}")

    def pump() -> None:
        for line in listener.stdout:
            lines.append(line.strip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    for name, extra in TESTS:
        t0 = time.monotonic()
        p = subprocess.run(
            [PY, PEER, "dial", addr, "--seed", str(DIAL_SEED), "--timeout", "60", *extra],
            capture_output=True, text=True, timeout=120,
        )
        wall = time.monotonic() - t0
        out = p.stdout.strip().splitlines()
        ok = p.returncode == 0 and len(out) == 1
        res = json.loads(out[0]) if out else {}
        ok = ok and res.get("ok") is True
        if name == "identify":
            ok = ok and res.get("agent") == "py-libp2p-interop/0.8.1" \
                and res.get("public_key_matches") is True \
                and "/echo/1.0.0" in res.get("protocols", [])
        print(f"{'PASS' if ok else 'FAIL'} {name}: rc={p.returncode} wall={wall:.2f}s {out}")
        if not ok:
            failures += 1
            sys.stderr.write(p.stderr)

    time.sleep(0.5)
    listener.stdin.close()
    try:
        rc = listener.wait(timeout=30)
    except subprocess.TimeoutExpired:
        listener.kill()
        rc = "killed"
    reader.join(timeout=5)
    events = [json.loads(x) for x in lines if x.startswith("{")]
    idents = [e for e in events if e.get("event") == "identified" and e["peer"] == dial_id]
    ok = rc == 0 and len(idents) == len(TESTS) and all(
        e["agent"] == "py-libp2p-interop/0.8.1" for e in idents)
    print(f"{'PASS' if ok else 'FAIL'} listener: rc={rc}, identified events "
          f"{len(idents)}/{len(TESTS)} (one per connection)")
    if idents:
        print(f"  sample: {json.dumps(idents[0])}")
    failures += 0 if ok else 1
    print("ALL PASSED" if failures == 0 else f"{failures} FAILED")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
