#!/usr/bin/env python3
"""py-libp2p 0.8.1 Circuit Relay v2 peer (``libp2p.relay.circuit_v2``) for
PointSub's relay interop tests (Tests/InteropTests/PyRelayInteropTests.swift).

    Interop/.venv/bin/python Interop/relay_peer.py --seed N [--role relay|client]
        [--limit-duration S] [--limit-data B] [--ttl S] [--lifetime S]

The host of Interop/peer.py (TCP on 127.0.0.1, Noise, Yamux, identities from
``--seed N``, /echo/1.0.0 served) with py's ``CircuitV2Protocol`` running:

- ``--role relay``: a hop relay (``allow_hop=True``) with ``RelayLimits``
  (duration ``--limit-duration``, data ``--limit-data``, reservation TTL
  ``--ttl``); it also serves the stop protocol.
- ``--role client`` (default): the stop protocol only (relayed connections
  to us are upgraded by py's ``_handle_stop_stream``), plus py's
  ``CircuitV2Transport`` (default ``RelayConfig``: roles STOP|CLIENT) to
  reserve on relays and to dial circuit addresses.

stdout carries only machine-readable lines: first
``LISTEN /ip4/127.0.0.1/tcp/P/p2p/ID``, then one JSON line per command.

stdin, one command per line, ``<n> <word> [args]``; each is answered, in
order, by ``{"n":<n>,"ok":true,...}`` or ``{"n":<n>,"ok":false,"error":E}``:

    <n> reserve RELAY/p2p/ID     py's client reservation (CircuitV2Transport.
                                 _make_reservation on a fresh hop stream):
                                 {"reserved":bool,"expire":E,"voucher":V}
                                 V: null, or the voucher as checked here with
                                 py's envelope code: {"valid":bool,"relay":ID,
                                 "peer":ID,"expiration":E}
    <n> reservations             (relay) the relay's reservations:
                                 {"peers":{ID:{"expires":E,"active":K}}}
    <n> dial CIRCUIT/p2p/ID      py's CircuitV2Transport.dial of a circuit
                                 address (py reserves on the relay first: its
                                 CLIENT role): {"peer":ID,"addrs":[..]}
    <n> connections ID           {"addrs":[[..],..]} transport addresses of
                                 each of py's connections to ID
    <n> echo ID SIZE             a /echo/1.0.0 stream to ID (on py's existing
                                 connection), SIZE pseudo-random bytes written
                                 while reading, FIN, all read back and
                                 compared: {"bytes":SIZE,"seconds":s}
    <n> ping ID COUNT            py's ping (/ipfs/ping/1.0.0) on py's
                                 connection: {"rtts":[..]} (py's unit)
    <n> hop ID HEX               a raw hop stream to ID: writes the bytes HEX
                                 as they are (the caller frames them), reads
                                 one length-prefixed HopMessage:
                                 {"type":T,"status":S} (S null if unset)
    <n> quit

Every command is bounded (30 s).  The program ends on stdin EOF, ``quit``,
or after ``--lifetime`` seconds (default 180), exit status 0.
"""

import argparse
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kad_peer as K  # noqa: E402  (the stdin line reader, error text)
import peer as P  # noqa: E402  (the interop peer: host construction, output, I/O)

COMMAND_TIMEOUT = 30


def voucher_report(raw: bytes) -> dict[str, Any] | None:
    """The voucher envelope checked with py's own code (signature over the
    domain libp2p-relay-rsvp, payload type 0x0302, Voucher payload)."""
    from libp2p.peer.envelope import unmarshal_envelope
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import Voucher
    from libp2p.relay.circuit_v2.resources import RELAY_RSVP_DOMAIN, VOUCHER_PAYLOAD_TYPE

    if not raw:
        return None
    out: dict[str, Any] = {"valid": False}
    try:
        env = unmarshal_envelope(raw)
        env.validate(RELAY_RSVP_DOMAIN)
        payload = Voucher()
        payload.ParseFromString(bytes(env.raw_payload))
        signer = ID.from_pubkey(env.public_key)
        out.update(
            relay=str(ID(payload.relay)),
            peer=str(ID(payload.peer)),
            expiration=int(payload.expiration),
            signer=str(signer),
            valid=bytes(env.payload_type) == VOUCHER_PAYLOAD_TYPE and signer == ID(payload.relay),
        )
    except Exception as e:  # noqa: BLE001 - reported to the caller
        out["error"] = K.describe(e)
    return out


async def echo(host: Any, peer_id: Any, size: int) -> dict[str, Any]:
    trio = P.trio
    data = random.Random(0x52454C4159 ^ size).randbytes(size)
    started = time.monotonic()
    stream = await host.new_stream(peer_id, [P.ECHO_PROTOCOL])
    received = bytearray()

    async def writer() -> None:
        for off in range(0, size, P.WRITE_CHUNK):
            await P.write_all(stream, data[off : off + P.WRITE_CHUNK])
        await stream.close()  # py: FIN (our reading side stays open)

    async def reader() -> None:
        while True:
            chunk = await P.read_some(stream)
            if not chunk:
                return
            received.extend(chunk)
            if len(received) > size:
                raise P.TestFailure(f"echo sent back more than {size} bytes")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(reader)
    if bytes(received) != data:
        raise P.TestFailure(f"echo returned {len(received)} bytes, not the {size} written")
    return {"bytes": size, "seconds": round(time.monotonic() - started, 3)}


async def raw_hop(host: Any, peer_id: Any, payload: bytes) -> dict[str, Any]:
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
    from libp2p.relay.circuit_v2.utils import read_delimited_msg

    stream = await host.new_stream(peer_id, [PROTOCOL_ID])
    try:
        await stream.write(payload)
        answer = await read_delimited_msg(stream, HopMessage)
    finally:
        with P.trio.move_on_after(2):
            await stream.close()
    return {"type": int(answer.type), "status": int(answer.status) if answer.HasField("status") else None}


async def command(host: Any, relay: Any, transport: Any, word: str, args: list[str]) -> dict[str, Any]:
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

    if word == "reserve":
        if transport is None:
            raise ValueError("reserve needs --role client")
        info = P.L.info_from_p2p_addr(P.L.multiaddr.Multiaddr(args[0]))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [PROTOCOL_ID])
        try:
            reserved = await transport._make_reservation(stream, info.peer_id)
        finally:
            await stream.close()
        proof = transport._reservation_proofs.get(info.peer_id)
        return {
            "reserved": bool(reserved),
            "expire": int(transport._reservations.get(info.peer_id, 0)),
            "voucher": voucher_report(bytes(proof.voucher)) if proof is not None else None,
        }
    if word == "reservations":
        if relay is None or not relay.allow_hop:
            raise ValueError("reservations needs --role relay")
        manager = relay.resource_manager
        manager._clean_expired()
        return {
            "peers": {
                str(p): {"expires": int(r.expires_at), "active": r.active_connections}
                for p, r in manager._reservations.items()
            }
        }
    if word == "dial":
        if transport is None:
            raise ValueError("dial needs --role client")
        conn = await transport.dial(P.L.multiaddr.Multiaddr(args[0]))
        return {
            "peer": str(conn.muxed_conn.peer_id),
            "addrs": [str(a) for a in conn.get_transport_addresses()],
        }
    if word == "connections":
        conns = host.get_network().get_connections(ID.from_base58(args[0]))
        return {"addrs": [[str(a) for a in c.get_transport_addresses()] for c in conns]}
    if word == "echo":
        return await echo(host, ID.from_base58(args[0]), int(args[1]))
    if word == "ping":
        from libp2p.host.ping import PingService

        rtts = await PingService(host).ping(ID.from_base58(args[0]), int(args[1]))
        return {"rtts": list(rtts)}
    if word == "hop":
        return await raw_hop(host, ID.from_base58(args[0]), bytes.fromhex(args[1]))
    raise ValueError(f"unknown command {word!r}")


async def run(args: argparse.Namespace) -> int:
    from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport, RelayLimits
    from libp2p.relay.circuit_v2.config import RelayConfig
    from libp2p.tools.anyio_service import background_trio_service

    trio = P.trio
    host = P.make_host(args.seed)
    listen = P.L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with host.run(listen_addrs=[listen]):
        await P.stop_auto_connector(host)
        limits = RelayLimits(
            duration=args.limit_duration,
            data=args.limit_data,
            max_circuit_conns=8,
            max_reservations=4,
            reservation_ttl=args.ttl,
        )
        relay = CircuitV2Protocol(host, limits=limits, allow_hop=args.role == "relay")
        async with background_trio_service(relay):
            with trio.fail_after(10):
                await relay.event_started.wait()
            transport = CircuitV2Transport(host, relay, RelayConfig()) if args.role == "client" else None
            addrs = [a for a in host.get_transport_addrs() if "/ip4/" in str(a)]
            if not addrs:
                raise RuntimeError(f"could not listen on {listen}")
            P.emit(f"LISTEN {addrs[0]}/p2p/{host.get_id()}")
            await K.serve_commands(args.lifetime, COMMAND_TIMEOUT, lambda word, rest: command(host, relay, transport, word, rest))
        await K.close_host(host)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=P.parse_seed, required=True)
    parser.add_argument("--role", choices=["relay", "client"], default="client")
    parser.add_argument("--limit-duration", type=int, default=600)
    parser.add_argument("--limit-data", type=int, default=8 << 20)
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--lifetime", type=float, default=180)
    return K.run_main(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
