#!/usr/bin/env python3
"""py-libp2p 0.8.1 Kademlia DHT peer (``libp2p.kad_dht``) for PointSub's DHT
interop tests (Tests/InteropTests/DHTInteropTests.swift).

    Interop/.venv/bin/python Interop/kad_peer.py --seed N [--mode server|client] [--lifetime S]

The host of Interop/peer.py (TCP on 127.0.0.1, Noise, Yamux, identities from
``--seed N``) with a ``KadDHT`` (server mode by default: it answers
/ipfs/kad/1.0.0; no random walk).  stdout carries only machine-readable lines:
first ``LISTEN /ip4/127.0.0.1/tcp/P/p2p/ID``, then one JSON line per command.

stdin, one command per line, ``<n> <word> [args]``; each is answered, in
order, by ``{"n":<n>,"ok":true,...}`` or ``{"n":<n>,"ok":false,"error":E}``:

    <n> connect MULTIADDR/p2p/ID   connect, then wait (at most 10 s) until
                                   py's routing table takes the peer (its
                                   ``add_peer`` checks identify's protocol list
                                   for /ipfs/kad/1.0.0): {"added":bool}
    <n> table                      {"peers":[ID,...]} py's routing table
    <n> provide HEX                provide the multihash HEX (a CID's
                                   multihash): {"result":bool}
    <n> find_providers HEX COUNT   {"providers":[{"peer":ID,"addrs":[..]}]}
    <n> find_peer ID               {"peer":ID|null,"addrs":[..]}
    <n> has_provider HEX ID        whether py's provider store holds ID for
                                   HEX (no lookup): {"result":bool}
    <n> quit

Values are not driven: py's ``put_value``/``get_value`` take the key as a
``str`` and encode it as UTF-8, so a ``/pk/<binary peer ID>`` key cannot be
expressed.

The program ends on stdin EOF, ``quit``, SIGTERM or after ``--lifetime``
seconds (default 180), exit status 0.
"""

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer as P  # noqa: E402  (the interop peer: host construction, output)


class LineReader:
    """Lines from fd 0 with os.read (not sys.stdin: a thread blocked inside the
    buffered reader holds its lock, and interpreter shutdown then aborts)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.eof = False

    def next_line(self) -> str | None:
        while b"\n" not in self.buffer and not self.eof:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buffer += chunk
        if b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
        elif self.buffer:
            line, self.buffer = self.buffer, b""
        else:
            return None
        return line.decode("utf-8", errors="replace").rstrip("\r")


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


async def close_host(host: Any) -> None:
    """Closes `host`, giving it at most 5 s (shielded from the enclosing cancellation)."""
    with P.trio.move_on_after(5) as cs:
        cs.shield = True
        await host.close()


def run_main(run: Any, args: argparse.Namespace) -> int:
    """Runs `run(args)` under trio with py-libp2p imported and warnings logged to stderr."""
    P.logging.basicConfig(level=P.logging.WARNING, stream=sys.stderr)
    P._import_libp2p()
    return P.trio.run(run, args)


async def serve_commands(lifetime: float, timeout: float, handle: Any) -> None:
    """Answers `<n> word args…` lines from stdin, one JSON line each (`ok` with the fields
    `handle(word, args)` returns, or `error`), until EOF, `quit` or `lifetime` seconds. Each
    command is bounded to `timeout` seconds; one bad command never ends the peer."""
    trio = P.trio
    reader = LineReader()
    with trio.move_on_after(lifetime):
        while True:
            line = await trio.to_thread.run_sync(reader.next_line, abandon_on_cancel=True)
            if line is None:
                break
            parts = line.split()
            if len(parts) < 2:
                continue
            n, word, rest = parts[0], parts[1], parts[2:]
            if word == "quit":
                P.emit_json({"n": n, "ok": True})
                break
            try:
                with trio.fail_after(timeout):
                    result = await handle(word, rest)
                P.emit_json({"n": n, "ok": True, **result})
            except Exception as e:  # noqa: BLE001 - one bad command must not end the peer
                P.emit_json({"n": n, "ok": False, "error": describe(e)})


async def command(host: Any, dht: Any, word: str, args: list[str]) -> dict[str, Any]:
    from libp2p.peer.id import ID

    trio = P.trio
    if word == "connect":
        info = P.L.info_from_p2p_addr(P.L.multiaddr.Multiaddr(args[0]))
        await host.connect(info)
        added = False
        with trio.move_on_after(10):
            while not added:
                added = await dht.add_peer(info.peer_id)
                if not added:
                    await trio.sleep(0.1)
        return {"added": added}
    if word == "table":
        return {"peers": [str(p) for p in dht.routing_table.get_peer_ids()]}
    if word == "provide":
        return {"result": bool(await dht.provider_store.provide(bytes.fromhex(args[0])))}
    if word == "find_providers":
        with trio.fail_after(30):
            found = await dht.provider_store.find_providers(bytes.fromhex(args[0]), int(args[1]))
        return {"providers": [{"peer": str(i.peer_id), "addrs": [str(a) for a in i.addrs]} for i in found]}
    if word == "has_provider":
        records = dht.provider_store.get_providers(bytes.fromhex(args[0]))
        return {"result": any(str(r.peer_id) == args[1] for r in records)}
    if word == "find_peer":
        with trio.fail_after(30):
            info = await dht.find_peer(ID.from_base58(args[0]))
        if info is None:
            return {"peer": None, "addrs": []}
        return {"peer": str(info.peer_id), "addrs": [str(a) for a in info.addrs]}
    raise ValueError(f"unknown command {word!r}")


async def run(args: argparse.Namespace) -> int:
    from libp2p.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    trio = P.trio
    host = P.make_host(args.seed)
    listen = P.L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with host.run(listen_addrs=[listen]):
        await P.stop_auto_connector(host)
        mode = DHTMode.SERVER if args.mode == "server" else DHTMode.CLIENT
        dht = KadDHT(host, mode)
        async with background_trio_service(dht):
            addrs = [a for a in host.get_transport_addrs() if "/ip4/" in str(a)]
            if not addrs:
                raise RuntimeError(f"could not listen on {listen}")
            P.emit(f"LISTEN {addrs[0]}/p2p/{host.get_id()}")
            await serve_commands(args.lifetime, 60, lambda word, rest: command(host, dht, word, rest))
        await close_host(host)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=P.parse_seed, required=True)
    parser.add_argument("--mode", choices=["server", "client"], default="server")
    parser.add_argument("--lifetime", type=float, default=180)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
