#!/usr/bin/env python3
"""py <-> py self-test of Interop/peer.py on loopback.

    Interop/.venv/bin/python Interop/selftest.py [-k SUBSTRING]

First checks the PointSub encoder offline against the examples of
docs/PROTOCOL.md.  Then starts one `peer.py listen` process, runs every dial
test against it (each in its own `peer.py dial` process), checks the JSON
lines on both sides, then closes the listener's stdin and checks that it exits
0 by itself.  A second listener started with --pointsub-rst-only (errors
followed by a bare RST, as other implementations send them) checks that the
py client still reads the error reply.  Every subprocess runs under a
timeout.  Exit status 0 = all passed.  -k runs only the dial tests whose name
contains SUBSTRING (the listener checks then only count those).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zlib
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
PY = sys.executable
KiB = 1024
MiB = 1024 * 1024
MAX_BLOCK = 32 * MiB

LISTEN_SEED = 1
DIAL_SEED = 2
RST_ONLY_SEED = 3

REV = "/pointsub/reverse/1.0.0"
UP = "/pointsub/upper/1.0.0"
FAIL = "/pointsub/fail/1.0.0"

Check = Callable[[dict[str, Any]], bool]


def subset(**want: Any) -> Check:
    return lambda res: all(res.get(k) == v for k, v in want.items())


def ps(proto: str, count: int, size: int, compressible: bool = False) -> list[str]:
    args = ["--test", "pointsub", "--protocol", proto, "--count", str(count),
            "--size", str(size)]
    return args + (["--compressible"] if compressible else [])


def ps_ok(n: int, creq: int, crep: int) -> Check:
    return subset(ok=True, requests=n, compressed_requests=creq, compressed_replies=crep,
                  stream_reused=n >= 2)


def too_large(creq: int) -> Check:
    return subset(ok=True, requests=1, compressed_requests=creq, compressed_replies=0,
                  stream_reused=False, error_code=3, after_error="reset")


def raw(proto: str, hexdata: str, half_close: bool = False) -> list[str]:
    return ["--test", "pointsub-raw", "--protocol", proto, "--hex", hexdata] + (
        ["--half-close"] if half_close else [])


def uv(n: int) -> str:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out.hex()


def error_reply(code: int, text_contains: str = "") -> Check:
    return lambda res: (res.get("ok") is True and res.get("kind") == 3
                        and res.get("flags") == 0 and res.get("code") == code
                        and text_contains in res.get("message", "")
                        and res.get("after") == "reset")


HELLO = b"hello".hex()
Z_HELLO = zlib.compress(b"hello").hex()  # 13 bytes

# (name, dial arguments, extra check of the result JSON or None)
TESTS: list[tuple[str, list[str], Check | None]] = [
    ("ping", ["--test", "ping", "--count", "5"], None),
    ("identify", ["--test", "identify"],
     lambda res: res.get("agent") == "py-libp2p-interop/0.8.1"
     and res.get("public_key_matches") is True
     and "/echo/1.0.0" in res.get("protocols", [])
     and all(p in res.get("protocols", []) for p in (REV, UP, FAIL))),
    ("echo 1 MiB x 4", ["--test", "echo", "--size", str(MiB), "--streams", "4"], None),
    ("echo 16 MiB x 1", ["--test", "echo", "--size", str(16 * MiB), "--streams", "1"], None),
    ("echo 0 B x 2", ["--test", "echo", "--size", "0", "--streams", "2"], None),
    ("perf 16 MiB up / 16 MiB down",
     ["--test", "perf", "--upload", str(16 * MiB), "--download", str(16 * MiB)], None),
    ("perf 0 up / 1 MiB down", ["--test", "perf", "--upload", "0", "--download", str(MiB)],
     None),
    # PointSub: the three protocols, one stream each, several requests per stream
    ("pointsub reverse 5 x 1 KiB random", ps(REV, 5, KiB), ps_ok(5, 0, 0)),
    ("pointsub upper 5 x 1 KiB random", ps(UP, 5, KiB), ps_ok(5, 0, 0)),
    ("pointsub fail 5 x 100 B random", ps(FAIL, 5, 100), ps_ok(5, 0, 0)),
    ("pointsub fail 3 x 4 KiB compressible", ps(FAIL, 3, 4 * KiB, True), ps_ok(3, 3, 3)),
    ("pointsub fail 1 x 1 MiB compressible (64 KiB message)", ps(FAIL, 1, MiB, True),
     ps_ok(1, 1, 1)),
    ("pointsub reverse 100 x 100 B on one stream", ps(REV, 100, 100), ps_ok(100, 0, 0)),
    ("pointsub upper 100 x 2 KiB compressible on one stream", ps(UP, 100, 2 * KiB, True),
     ps_ok(100, 100, 100)),
    # sizes
    ("pointsub reverse size 0", ps(REV, 3, 0), ps_ok(3, 0, 0)),
    ("pointsub upper size 0 compressible", ps(UP, 2, 0, True), ps_ok(2, 0, 0)),
    ("pointsub fail size 0", ps(FAIL, 2, 0), ps_ok(2, 0, 0)),
    ("pointsub reverse size 1", ps(REV, 3, 1), ps_ok(3, 0, 0)),
    ("pointsub reverse 1023 B compressible (below 1 KiB: not compressed)",
     ps(REV, 2, 1023, True), ps_ok(2, 0, 0)),
    ("pointsub reverse 1 KiB compressible", ps(REV, 2, KiB, True), ps_ok(2, 2, 2)),
    ("pointsub upper 1 MiB random", ps(UP, 2, MiB), ps_ok(2, 0, 0)),
    ("pointsub reverse 1 MiB compressible", ps(REV, 2, MiB, True), ps_ok(2, 2, 2)),
    ("pointsub reverse 32 MiB random (exactly the limit)", ps(REV, 1, MAX_BLOCK),
     ps_ok(1, 0, 0)),
    ("pointsub upper 32 MiB compressible (exactly the limit)", ps(UP, 1, MAX_BLOCK, True),
     ps_ok(1, 1, 1)),
    ("pointsub reverse 32 MiB + 1 random -> tooLarge (length)", ps(REV, 1, MAX_BLOCK + 1),
     too_large(0)),
    ("pointsub upper 32 MiB + 1 compressible -> tooLarge (original)",
     ps(UP, 3, MAX_BLOCK + 1, True), too_large(1)),
    # raw bytes: the doc's example, then protocol violations
    ("pointsub-raw reverse: doc example request", raw(REV, "010005" + HELLO),
     subset(ok=True, kind=2, flags=0, header_hex="020005", payload_hex=b"olleh".hex(),
            after="open")),
    ("pointsub-raw upper: request, then half-close -> reply, then close",
     raw(UP, "010005" + HELLO, True),
     subset(ok=True, kind=2, flags=0, payload_hex=b"HELLO".hex(), after="eof")),
    ("pointsub-raw fail: 'no such key'", raw(FAIL, "01000b" + b"no such key".hex()),
     subset(ok=True, kind=3, flags=0, code=1, message="py handler failed: no such key",
            header_hex="03001f", after="open")),
    ("pointsub-raw reverse: compressed 5-byte request accepted",
     raw(REV, "01010d05" + Z_HELLO),
     subset(ok=True, kind=2, flags=0, payload_hex=b"olleh".hex())),
    ("pointsub-raw: kind 0x00 -> malformed", raw(REV, "0000"), error_reply(4, "kind 0x00")),
    ("pointsub-raw: kind 0x02 (response from client) -> malformed", raw(REV, "020005" + HELLO),
     error_reply(4, "kind 0x02")),
    ("pointsub-raw: kind 0x03 (error from client) -> malformed", raw(UP, "03000101"),
     error_reply(4, "kind 0x03")),
    ("pointsub-raw: kind 0x04 -> malformed", raw(FAIL, "04"), error_reply(4, "kind 0x04")),
    ("pointsub-raw: reserved flag 0x02 -> malformed", raw(REV, "010200"), error_reply(4, "flag")),
    ("pointsub-raw: reserved flag 0x80 -> malformed", raw(REV, "018100"), error_reply(4, "flag")),
    ("pointsub-raw: non-minimal length 80 00 -> malformed", raw(REV, "01008000"),
     error_reply(4, "non-minimal")),
    ("pointsub-raw: non-minimal length 85 80 00 -> malformed", raw(REV, "0100858000" + HELLO),
     error_reply(4, "non-minimal")),
    ("pointsub-raw: non-minimal original -> malformed", raw(REV, "01010d8500" + Z_HELLO),
     error_reply(4, "non-minimal")),
    ("pointsub-raw: 10-byte uvarint -> malformed", raw(REV, "0100" + "ff" * 9 + "01"),
     error_reply(4, "longer than 9")),
    ("pointsub-raw: length 32 MiB + 1 -> tooLarge", raw(REV, "0100" + uv(MAX_BLOCK + 1)),
     error_reply(3, "33554433")),
    ("pointsub-raw: length 2^63-1 (9-byte uvarint) -> tooLarge", raw(REV, "0100" + uv(2**63 - 1)),
     error_reply(3, "exceeds")),
    ("pointsub-raw: original 32 MiB + 1 -> tooLarge", raw(UP, "010105" + uv(MAX_BLOCK + 1)),
     error_reply(3, "original")),
    ("pointsub-raw: original too small -> malformed", raw(REV, "01010d04" + Z_HELLO),
     error_reply(4, "original=4")),
    ("pointsub-raw: original too big -> malformed", raw(REV, "01010d06" + Z_HELLO),
     error_reply(4, "original=6")),
    ("pointsub-raw: not zlib data -> malformed", raw(REV, "0101050568656c6c6f"),
     error_reply(4, "zlib")),
    ("pointsub-raw: truncated zlib data -> malformed", raw(REV, "01010c05" + Z_HELLO[:-2]),
     error_reply(4, "zlib")),
    ("pointsub-raw: bytes after the zlib data -> malformed", raw(REV, "01010e05" + Z_HELLO + "00"),
     error_reply(4, "after the end")),
    ("pointsub-raw: compressed, length 0 -> malformed", raw(REV, "01010000"), error_reply(4, "zlib")),
    ("pointsub-raw: EOF inside the payload -> reset, no reply", raw(REV, "0100056865", True),
     subset(ok=True, reset=True, how="reset")),
    ("pointsub-raw: EOF inside the header -> reset, no reply", raw(REV, "0100", True),
     subset(ok=True, reset=True, how="reset")),
    ("pointsub-raw: EOF before any request -> close, no reply", raw(REV, "", True),
     subset(ok=True, reset=True, how="eof")),
]

# Against the --pointsub-rst-only listener: the error reply must survive a
# bare RST right behind it (py drops buffered data on RST; peer.py reads it).
RST_ONLY_TESTS: list[tuple[str, list[str], Check | None]] = [
    ("rst-only: pointsub-raw kind 0x00 -> malformed", raw(REV, "0000"), error_reply(4, "kind 0x00")),
    ("rst-only: pointsub-raw length 32 MiB + 1 -> tooLarge", raw(REV, "0100" + uv(MAX_BLOCK + 1)),
     error_reply(3, "exceeds")),
    ("rst-only: pointsub 32 MiB + 1 random -> tooLarge", ps(UP, 1, MAX_BLOCK + 1),
     too_large(0)),
    ("rst-only: pointsub 2 x 1 KiB still fine", ps(REV, 2, KiB, True), ps_ok(2, 2, 2)),
]


def check_doc_examples() -> int:
    """The examples of docs/PROTOCOL.md, produced by peer.py's own encoder."""
    saved = sys.stdout
    sys.path.insert(0, HERE)
    import peer  # noqa: E402  (redirects sys.stdout to stderr on import)

    sys.stdout = saved
    failures = 0

    def expect(name: str, got: bytes, want_hex: str) -> None:
        nonlocal failures
        ok = got.hex() == want_hex.replace(" ", "")
        failures += 0 if ok else 1
        print(f"{'PASS' if ok else 'FAIL'} doc example {name}: {got.hex(' ')}")

    h, p = peer.ps_encode(peer.PS_REQUEST, b"hello")
    expect("request 'hello'", h + p, "01 00 05 68 65 6c 6c 6f")
    h, p = peer.ps_encode(peer.PS_RESPONSE, b"olleh")
    expect("response 'olleh'", h + p, "02 00 05 6f 6c 6c 65 68")
    h, p = peer.ps_encode(peer.PS_ERROR, peer.ps_error_payload(1, "no such key"))
    expect("error handler 'no such key'", h + p,
           "03 00 0c 01 6e 6f 20 73 75 63 68 20 6b 65 79")
    body = (b"abcdefghijklm" * 200)[:2000]  # zlib level 6 -> 37 bytes
    h, p = peer.ps_encode(peer.PS_RESPONSE, body)
    expect("compressed response 2000 -> 37 bytes (header)", h, "02 01 25 d0 0f")
    ok = len(p) == 37 and peer.ps_decompress(p, 2000) == body
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} doc example compressed payload: {len(p)} bytes of "
          f"zlib data, inflates back")
    # compression rules: >= 1 KiB and >= 10 % saved, else as is
    cases = [(b"a" * 1023, 0), (b"a" * 1024, 1), (os.urandom(4096), 0)]
    ok = all(peer.ps_encode(2, d)[0][1] == f for d, f in cases)
    failures += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} compression threshold (1023 B no, 1024 B yes, "
          f"random no)")
    return failures


def peer_id(seed: int) -> str:
    out = subprocess.run([PY, PEER, "id", "--seed", str(seed)], capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout.strip()


class Listener:
    def __init__(self, seed: int, extra: list[str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [PY, PEER, "listen", "--seed", str(seed), "--lifetime", "900", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
        )
        self.killer = threading.Timer(920, self.proc.kill)
        self.killer.daemon = True
        self.killer.start()
        first = self.proc.stdout.readline().strip()
        if not first.startswith("LISTEN "):
            self.proc.kill()
            raise RuntimeError(f"listener said {first!r}")
        self.addr = first.split(" ", 1)[1]
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def stop(self) -> Any:
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "killed"
        self.killer.cancel()
        self.reader.join(timeout=5)
        return rc


def run_dials(addr: str, tests: list[tuple[str, list[str], Check | None]]) -> int:
    failures = 0
    for name, extra, check in tests:
        t0 = time.monotonic()
        p = subprocess.run(
            [PY, PEER, "dial", addr, "--seed", str(DIAL_SEED), "--timeout", "60", *extra],
            capture_output=True, text=True, timeout=120,
        )
        wall = time.monotonic() - t0
        out = p.stdout.strip().splitlines()
        ok = p.returncode == 0 and len(out) == 1
        try:
            res = json.loads(out[0]) if out else {}
        except ValueError:
            res = {}
        ok = ok and res.get("ok") is True and (check is None or check(res))
        shown = out if len(str(out)) <= 400 else str(out)[:397] + "..."
        print(f"{'PASS' if ok else 'FAIL'} {name}: rc={p.returncode} wall={wall:.2f}s {shown}",
              flush=True)
        if not ok:
            failures += 1
            sys.stderr.write(p.stderr)
    return failures


def check_listener(listener: Listener, rc: Any, dial_id: str, n: int, label: str) -> int:
    events = [json.loads(x) for x in listener.lines if x.startswith("{")]
    idents = [e for e in events if e.get("event") == "identified" and e["peer"] == dial_id]
    ok = rc == 0 and len(idents) == n and all(
        e["agent"] == "py-libp2p-interop/0.8.1" for e in idents)
    print(f"{'PASS' if ok else 'FAIL'} {label}: rc={rc}, identified events "
          f"{len(idents)}/{n} (one per connection)")
    if idents and label == "listener":
        print(f"  sample: {json.dumps(idents[0])}")
    return 0 if ok else 1


def main() -> int:
    only = None
    if len(sys.argv) == 3 and sys.argv[1] == "-k":
        only = sys.argv[2]
    elif len(sys.argv) != 1:
        print(__doc__)
        return 2
    t_start = time.monotonic()
    tests = [t for t in TESTS if only is None or only in t[0]]
    rst_tests = [t for t in RST_ONLY_TESTS if only is None or only in t[0]]

    failures = check_doc_examples()
    assert peer_id(1) == "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
    assert peer_id(0) == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    dial_id = peer_id(DIAL_SEED)

    if tests:
        try:
            listener = Listener(LISTEN_SEED, [])
        except RuntimeError as e:
            print(f"FAIL: {e}")
            return 1
        print(f"listener: {listener.addr}")
        failures += run_dials(listener.addr, tests)
        time.sleep(0.5)
        rc = listener.stop()
        failures += check_listener(listener, rc, dial_id, len(tests), "listener")

    if rst_tests:
        try:
            listener = Listener(RST_ONLY_SEED, ["--pointsub-rst-only"])
        except RuntimeError as e:
            print(f"FAIL: {e}")
            return 1
        print(f"listener (--pointsub-rst-only): {listener.addr}")
        failures += run_dials(listener.addr, rst_tests)
        time.sleep(0.5)
        rc = listener.stop()
        failures += check_listener(listener, rc, dial_id, len(rst_tests), "rst-only listener")

    print(f"total {time.monotonic() - t_start:.1f} s")
    print("ALL PASSED" if failures == 0 else f"{failures} FAILED")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
