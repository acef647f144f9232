#!/usr/bin/env python3
"""py <-> py self-test of Interop/pubsub_peer.py, for both routers.

    Interop/.venv/bin/python Interop/pubsub_selftest.py [floodsub|gossipsub ...]

For each router: A listens, B dials A, C dials B (a line A - B - C).  Each
publishes one line through stdin; every node must receive the other two
messages (A's reaches C only through B's forwarding, and C's reaches A the
same way), exactly once.  Then B publishes 3 more by itself
(--publish-count), the nodes get stdin EOF, and each must report its exit.
Prints one line per check; exit status 0 when all pass.  Takes ~15 s.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "pubsub_peer.py")
PY = sys.executable


class Peer:
    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [PY, SCRIPT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.addr = self.wait_line(lambda l: l.startswith("LISTEN "), 30).split(" ", 1)[1]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("{"):
                self.events.append(json.loads(line))
            self.lines.put(line)

    def wait_line(self, pred, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if pred(line):
                return line
        raise TimeoutError(f"{self.name}: no matching line within {timeout} s")

    def wait(self, pred, timeout: float = 15) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            time.sleep(0.02)
        raise TimeoutError(f"{self.name}: no matching event within {timeout} s: {self.events[-5:]}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def messages(self) -> list[str]:
        return [e["data"] for e in self.events if e.get("event") == "message"]


def run(router: str) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append((f"{router}: {name}", ok, detail))

    common = ["--router", router, "--topic", "selftest"]
    peers: list[Peer] = []
    try:
        a = Peer("A", ["listen", "--seed", "101", *common])
        peers.append(a)
        b = Peer("B", ["dial", a.addr, "--seed", "102", *common])
        peers.append(b)
        c = Peer("C", ["dial", b.addr, "--seed", "103", *common])
        peers.append(c)
        subscribed = lambda e: e.get("event") == "peer" and e.get("subscribed")  # noqa: E731
        a.wait(subscribed)
        c.wait(subscribed)
        b.wait(lambda e: subscribed(e) and e["peer"] in a.addr)
        b.wait(lambda e: subscribed(e) and e["peer"] in c.addr)
        if router == "gossipsub":
            # Publishing before the mesh exists would rely on py's replay.
            for p in (a, c):
                p.wait(lambda e: e.get("event") == "control" and e["type"] == "graft")
        check("A-B-C connected, each sees its neighbours subscribe", True)

        if router == "gossipsub":
            # A GRAFT event on one side may precede its arrival on the other: ask until both are in.
            ids = {a.addr.rsplit("/", 1)[1], c.addr.rsplit("/", 1)[1]}
            mesh: dict = {}
            for attempt in range(100):
                b.send("mesh")
                b.wait(lambda e, n=attempt: sum(1 for x in list(b.events) if x.get("event") == "mesh") > n)
                mesh = [x for x in list(b.events) if x.get("event") == "mesh"][attempt]
                if set(mesh["peers"]) == ids:
                    break
                time.sleep(0.05)
            check("the mesh command lists B's mesh (A and C)", set(mesh["peers"]) == ids, json.dumps(mesh))
        else:
            b.send("mesh")
            b.wait(lambda e: e.get("event") == "error" and "mesh" in e["error"])
            check("the mesh command is an error with floodsub", True)

        a.send("hello from A")
        c.send("publish hello from C")
        b.send("publish-to selftest hello from B")
        for p, want in ((a, ["hello from B", "hello from C"]), (b, ["hello from A", "hello from C"]),
                        (c, ["hello from A", "hello from B"])):
            for text in want:
                p.wait(lambda e, t=text: e.get("event") == "message" and e["data"] == t)
        time.sleep(1.0)  # time for duplicates to show up
        counts = {p.name: sorted(p.messages()) for p in peers}
        ok = all(len(m) == 2 for m in counts.values())
        check("every node got the other two messages exactly once (A <-> C through B)", ok, json.dumps(counts))
        froms = {e["from"] for e in c.events if e.get("event") == "message" and e["data"] == "hello from A"}
        check("origin is kept when forwarded", froms == {a.addr.rsplit("/", 1)[1]}, str(froms))
        signed = all(e["signed"] and e["verified"] for p in peers for e in p.events if e.get("event") == "message")
        check("messages are signed and verify (strict signing)", signed)

        b.send("subscribe other")
        a.wait(lambda e: e.get("event") == "peer" and e["topic"] == "other" and e["subscribed"])
        b.send("unsubscribe other")
        a.wait(lambda e: e.get("event") == "peer" and e["topic"] == "other" and not e["subscribed"])
        check("subscribe/unsubscribe commands are announced", True)
    except Exception as e:  # noqa: BLE001
        check("scenario", False, f"{type(e).__name__}: {e}")
    finally:
        codes = [p.close() for p in peers]
        exits = [p.wait(lambda e: e.get("event") == "exit", 1) if p.events else None for p in peers]
        check("every node exits 0 on stdin EOF with an exit event",
              codes == [0] * len(peers) and all(x and x["reason"] == "stdin EOF" for x in exits),
              f"codes {codes}")
    return checks


def run_auto(router: str) -> list[tuple[str, bool, str]]:
    """--publish-count: B publishes 3 by itself once A is ready, then exits."""
    name = f"{router}: --publish-count 3 --exit-after-publish"
    common = ["--router", router, "--topic", "auto"]
    a = Peer("A", ["listen", "--seed", "111", *common])
    try:
        b = subprocess.run(
            [PY, SCRIPT, "dial", a.addr, "--seed", "112", *common, "--publish-count", "3",
             "--publish-interval", "0.1", "--exit-after-publish", "--linger", "0.5", "--ignore-stdin"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        events = [json.loads(l) for l in b.stdout.splitlines() if l.startswith("{")]
        published = [e for e in events if e["event"] == "published"]
        for i in range(1, 4):
            a.wait(lambda e, i=i: e.get("event") == "message" and e["data"] == f"py 112 msg {i}", 10)
        seqnos = [e["seqno"] for e in a.events if e.get("event") == "message"]
        ok = b.returncode == 0 and seqnos == [p["seqno"] for p in published] and len(seqnos) == 3
        return [(name, ok, f"status {b.returncode}, seqnos {seqnos}")]
    except Exception as e:  # noqa: BLE001
        return [(name, False, f"{type(e).__name__}: {e}")]
    finally:
        a.close()


def main() -> int:
    routers = sys.argv[1:] or ["floodsub", "gossipsub"]
    results = []
    for router in routers:
        results += run(router) + run_auto(router)
    for name, ok, detail in results:
        print(("PASS " if ok else "FAIL ") + name + (f" ({detail})" if detail and not ok else ""))
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
