#!/usr/bin/env python3
"""py-libp2p 0.8.1 side of the signed peer record interop tests
(Tests/InteropTests/PeerRecordInteropTests.swift).

    Interop/.venv/bin/python Interop/peer_record.py seal --seed N --seq S ADDR...
    Interop/.venv/bin/python Interop/peer_record.py open HEX
    Interop/.venv/bin/python Interop/peer_record.py listen --seed N

seal: py-libp2p seals a peer record of the Ed25519 key of seed N (32-byte
little-endian, as peer.py) with seq S and the addresses; prints one JSON line
``{"ok":true,"peer":..,"envelope":HEX}``.

open: py-libp2p consumes the envelope (``consume_envelope`` with domain
"libp2p-peer-record": signature, payload type, record decoding) and checks
that the signer is the record's peer; prints
``{"ok":true,"peer":..,"seq":S,"addrs":[..]}`` or ``{"ok":false,"error":..}``
(exit 1).

listen: the listener of peer.py (same host, same identify hooks); for every
identified connection it prints, after py-libp2p's own identify handling,
``{"event":"record","peer":..,"sent":bool,"stored":bool,"seq":S|null,
"addrs":[..],"listen_addrs":[..]}``: whether the peer sent a signed peer
record (identify field 8) and whether py's certified address book accepted
it (``peerstore.get_peer_record``), with the stored record's seq and
addresses. Runs until stdin reaches EOF.

py-libp2p quirks relied on: its identify consumes field 8 with
``consume_envelope`` and stores the record only if the record's peer is the
sender (``update_peerstore_from_identify``); it sends its own record in
field 8, made from ``host.get_addrs()``.
"""

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer as P  # noqa: E402  (the interop peer: host construction, output, listener)


def cmd_seal(args: argparse.Namespace) -> int:
    from multiaddr import Multiaddr
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.peer.envelope import seal_record
    from libp2p.peer.id import ID
    from libp2p.peer.peer_record import PeerRecord

    sk = Ed25519PrivateKey.from_bytes(P.seed_to_secret(args.seed))
    pid = ID.from_pubkey(sk.get_public_key())
    record = PeerRecord(pid, [Multiaddr(a) for a in args.addrs], args.seq)
    envelope = seal_record(record, sk)
    P.emit_json({"ok": True, "peer": str(pid), "envelope": envelope.marshal_envelope().hex()})
    return 0


def cmd_open(args: argparse.Namespace) -> int:
    from libp2p.peer.envelope import consume_envelope
    from libp2p.peer.id import ID

    try:
        envelope, record = consume_envelope(bytes.fromhex(args.envelope), "libp2p-peer-record")
        if ID.from_pubkey(envelope.public_key) != record.peer_id:
            raise ValueError("the envelope's key is not the record's peer")
    except Exception as e:  # any refusal is the answer
        P.emit_json({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    P.emit_json({
        "ok": True,
        "peer": str(record.peer_id),
        "seq": record.seq,
        "addrs": [str(a) for a in record.addrs],
    })
    return 0


async def run_listen(args: argparse.Namespace) -> int:
    host = P.make_host(args.seed)
    reporter = P.IdentifyReporter(host)
    plain_report = reporter.report

    def report(conn: Any, peer_id: Any, msg: Any, source: str) -> None:
        # Called after py-libp2p's own update_peerstore_from_identify.
        if conn is not None and conn in reporter.reported:
            return
        plain_report(conn, peer_id, msg, source)
        stored = host.get_peerstore().get_peer_record(peer_id)
        record = stored.record() if stored is not None else None
        P.emit_json({
            "event": "record",
            "peer": str(peer_id),
            "sent": bool(msg.HasField("signedPeerRecord") and msg.signedPeerRecord),
            "stored": stored is not None,
            "seq": record.seq if record is not None else None,
            "addrs": [str(a) for a in record.addrs] if record is not None else [],
            "listen_addrs": [P._maddr_str(a) for a in msg.listen_addrs],
        })

    reporter.report = report
    reporter.install()
    listen = P.L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with P.trio.open_nursery() as nursery:
        reporter.nursery = nursery
        async with host.run(listen_addrs=[listen]):
            await P.stop_auto_connector(host)
            addrs = [a for a in host.get_transport_addrs() if "/ip4/" in str(a)]
            if not addrs:
                raise RuntimeError(f"could not listen on {listen}")
            P.emit(f"LISTEN {addrs[0]}/p2p/{host.get_id()}")
            await P.wait_stdin_eof()
            nursery.cancel_scope.cancel()
            with P.trio.move_on_after(5) as cs:
                cs.shield = True
                await host.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    seal = sub.add_parser("seal")
    seal.add_argument("--seed", type=P.parse_seed, required=True)
    seal.add_argument("--seq", type=int, required=True)
    seal.add_argument("addrs", nargs="*")
    opener = sub.add_parser("open")
    opener.add_argument("envelope")
    listen = sub.add_parser("listen")
    listen.add_argument("--seed", type=P.parse_seed, required=True)
    args = parser.parse_args()
    P.logging.basicConfig(level=P.logging.WARNING, stream=sys.stderr)
    if args.command == "seal":
        return cmd_seal(args)
    if args.command == "open":
        return cmd_open(args)
    P._import_libp2p()
    return P.trio.run(run_listen, args)


if __name__ == "__main__":
    sys.exit(main())
