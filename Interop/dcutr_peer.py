#!/usr/bin/env python3
"""py-libp2p 0.8.1 DCUtR peer (``libp2p.relay.circuit_v2.dcutr.DCUtRProtocol``) for
PointSub's hole-punching interop tests (Tests/InteropTests/PyDCUtRInteropTests.swift).

    Interop/.venv/bin/python Interop/dcutr_peer.py --seed N [--lifetime S]

The relay client of Interop/relay_peer.py (``--role client``: py's stop handler, and its
``CircuitV2Transport`` to reserve on relays and dial circuit addresses; TCP on 127.0.0.1,
Noise, Yamux, /echo/1.0.0) with py's ``DCUtRProtocol`` running as well.  Two of py's DCUtR
behaviours are switched off here, both because on loopback they make a hole punch needless
(they are not address filters: py 0.8.1's DCUtR dials loopback addresses as they come):

- ``DCUtRProtocol._try_unilateral_upgrade`` (run before every hole punch py starts) dials
  the peer's identify addresses directly, which on 127.0.0.1 always connects: py would never
  send CONNECT.  Replaced by ``return False`` (``--unilateral`` keeps py's own).
- ``DCUtRProtocol._auto_drive_loop`` starts a hole punch (through the unilateral upgrade) every
  2 s toward each peer py has only relayed connections to, also when py *dialed* the circuit,
  where the spec has the other side start.  Replaced by a no-op; py starts a hole punch only
  on the ``punch`` command (``--auto-drive`` keeps py's own loop).

stdout: ``LISTEN /ip4/127.0.0.1/tcp/P/p2p/ID``, then one JSON line per command.  stdin: the
commands of relay_peer.py (reserve, dial, connections, echo, ping, hop, quit), plus

    <n> punch ID        py starts DCUtR with ID (``initiate_hole_punch``, on py's relayed
                        connection): {"result":bool,"direct":bool,"connections":[[..],..]}
    <n> direct ID       {"direct":bool,"connections":[[..],..]} whether py has a
                        non-relayed connection to ID (py's ``_verify_direct_connection``)
    <n> dcutr-raw ID HEX [HEX…]
                        a raw /libp2p/dcutr stream to ID (on py's existing connection,
                        that is the relayed one when it is the only one): writes each HEX
                        as it is (the caller frames it); between two, reads one
                        length-prefixed HolePunch; after the last, reads until the stream
                        ends (5 s at most): {"replies":[{"type":T,"addrs":[..]}],
                        "end":"eof"|"reset"|"timeout"}
    <n> dcutr-stats     {"attempts":{ID:K},"direct":[ID,..]} py's own bookkeeping

Every command is bounded (30 s).  The program ends on stdin EOF, ``quit``, or after
``--lifetime`` seconds (default 180), exit status 0.
"""

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kad_peer as K  # noqa: E402  (the command loop, error text)
import peer as P  # noqa: E402  (host construction, output, I/O)
import relay_peer as R  # noqa: E402  (the relay client's commands)

COMMAND_TIMEOUT = 30
RAW_END_WAIT = 5


def connections_of(host: Any, peer_id: Any) -> list[list[str]]:
    conns = host.get_network().get_connections(peer_id)
    return [[str(a) for a in c.get_transport_addresses()] for c in conns]


async def read_hole_punch(stream: Any) -> dict[str, Any]:
    from libp2p.relay.circuit_v2.dcutr import read_dcutr_msg
    from libp2p.relay.circuit_v2.pb.dcutr_pb2 import HolePunch

    msg = await read_dcutr_msg(stream, HolePunch)
    addrs = []
    for raw in msg.ObsAddrs:
        try:
            addrs.append(str(P.L.multiaddr.Multiaddr(raw)))
        except Exception:  # noqa: BLE001 - reported as hex
            addrs.append(raw.hex())
    return {"type": int(msg.type), "addrs": addrs}


async def raw_dcutr(host: Any, peer_id: Any, chunks: list[bytes]) -> dict[str, Any]:
    """Writes `chunks` on a fresh DCUtR stream, one reply read between two; then waits for
    the stream's end. py's yamux stream: a FIN reads as b"", a RST raises."""
    from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID

    trio = P.trio
    stream = await host.new_stream(peer_id, [PROTOCOL_ID])
    replies: list[dict[str, Any]] = []
    end = "timeout"
    try:
        for i, chunk in enumerate(chunks):
            await stream.write(chunk)
            if i + 1 < len(chunks):
                with trio.fail_after(10):
                    replies.append(await read_hole_punch(stream))
        with trio.move_on_after(RAW_END_WAIT):
            try:
                while True:
                    data = await stream.read(4096)
                    if not data:
                        end = "eof"
                        break
            except Exception:  # noqa: BLE001 - py raises on a reset stream
                end = "reset"
    finally:
        with trio.move_on_after(2):
            await stream.reset()
    return {"replies": replies, "end": end}


async def command(host: Any, relay: Any, transport: Any, dcutr: Any, word: str, args: list[str]) -> dict[str, Any]:
    from libp2p.peer.id import ID

    if word == "punch":
        peer_id = ID.from_base58(args[0])
        result = await dcutr.initiate_hole_punch(peer_id)
        return {
            "result": bool(result),
            "direct": await dcutr._verify_direct_connection(peer_id),
            "connections": connections_of(host, peer_id),
        }
    if word == "direct":
        peer_id = ID.from_base58(args[0])
        return {"direct": await dcutr._verify_direct_connection(peer_id), "connections": connections_of(host, peer_id)}
    if word == "dcutr-raw":
        return await raw_dcutr(host, ID.from_base58(args[0]), [bytes.fromhex(h) for h in args[1:]])
    if word == "dcutr-stats":
        return {
            "attempts": {str(p): k for p, k in dcutr._hole_punch_attempts.items()},
            "direct": sorted(str(p) for p in dcutr._direct_connections),
        }
    return await R.command(host, relay, transport, word, args)


async def run(args: argparse.Namespace) -> int:
    from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport, RelayLimits
    from libp2p.relay.circuit_v2.config import RelayConfig
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
    from libp2p.tools.anyio_service import background_trio_service

    trio = P.trio
    if not args.unilateral:
        async def no_unilateral_upgrade(self: Any, peer_id: Any) -> bool:
            return False

        DCUtRProtocol._try_unilateral_upgrade = no_unilateral_upgrade  # type: ignore[method-assign]
    if not args.auto_drive:
        async def no_auto_drive(self: Any) -> None:
            return None

        DCUtRProtocol._auto_drive_loop = no_auto_drive  # type: ignore[method-assign]

    host = P.make_host(args.seed)
    # Room for the relayed connection and both hole-punch connections: on loopback there is no
    # NAT, so the dial of the side that starts lands on py's listener (both ends then run Noise as
    # the responder and that connection stalls) while py's own dial, as the client, succeeds;
    # with peer.py's one connection per peer, py would keep only the stalled one.
    host.get_network().connection_config.max_connections_per_peer = 4
    listen = P.L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with host.run(listen_addrs=[listen]):
        await P.stop_auto_connector(host)
        relay = CircuitV2Protocol(host, limits=RelayLimits(
            duration=600, data=8 << 20, max_circuit_conns=8, max_reservations=4, reservation_ttl=3600,
        ), allow_hop=False)
        dcutr = DCUtRProtocol(host)
        async with background_trio_service(relay), background_trio_service(dcutr):
            with trio.fail_after(10):
                await relay.event_started.wait()
                await dcutr.event_started.wait()
            transport = CircuitV2Transport(host, relay, RelayConfig())
            addrs = [a for a in host.get_transport_addrs() if "/ip4/" in str(a)]
            if not addrs:
                raise RuntimeError(f"could not listen on {listen}")
            P.emit(f"LISTEN {addrs[0]}/p2p/{host.get_id()}")
            await K.serve_commands(
                args.lifetime, COMMAND_TIMEOUT, lambda word, rest: command(host, relay, transport, dcutr, word, rest)
            )
        await K.close_host(host)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=P.parse_seed, required=True)
    parser.add_argument("--lifetime", type=float, default=180)
    parser.add_argument("--unilateral", action="store_true", help="keep py's unilateral upgrade")
    parser.add_argument("--auto-drive", action="store_true", help="keep py's auto-drive loop")
    parser.add_argument("-v", action="count", default=0)
    args = parser.parse_args()
    level = {0: P.logging.WARNING, 1: P.logging.INFO}.get(args.v, P.logging.DEBUG)
    P.logging.basicConfig(level=P.logging.WARNING, stream=sys.stderr)
    P.logging.getLogger("libp2p.relay.circuit_v2.dcutr").setLevel(level)
    P._import_libp2p()
    return P.trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
