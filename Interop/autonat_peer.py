#!/usr/bin/env python3
"""py-libp2p 0.8.1 AutoNAT v1 peer (``libp2p.host.autonat.AutoNATService``)
for PointSub's AutoNAT interop tests
(Tests/InteropTests/PyAutoNATInteropTests.swift).

    Interop/.venv/bin/python Interop/autonat_peer.py --seed N [--lifetime S]

The host of Interop/peer.py (TCP on 127.0.0.1, Noise, Yamux, identities from
``--seed N``) with py's ``AutoNATService(host, serve=True, confirmations=1)``:
it answers /libp2p/autonat/1.0.0 and, as a client, sets its status from one
server's verdict (py's default needs four servers to agree).

py 0.8.1's server "dials back" with ``host.connect``, which returns at once
when any connection to the peer exists -- and the requester's own connection
always does.  So py answers OK for the first requested address on the
observed IP without dialing anything.  This peer therefore starts in mode
``fresh``: py's request handling as it is (observed-IP filter, answer), but the
dial-back is a new connection (``swarm.dial_addr``) to each address in turn,
closed again after the handshake.  ``mode stock`` restores py's own
``_try_dial``.  Every dial-back request the server handled is recorded
(``served``).

stdout carries only machine-readable lines: first
``LISTEN /ip4/127.0.0.1/tcp/P/p2p/ID``, then one JSON line per command.

stdin, one command per line, ``<n> <word> [args]``; each is answered, in
order, by ``{"n":<n>,"ok":true,...}`` or ``{"n":<n>,"ok":false,"error":E}``:

    <n> connect MULTIADDR/p2p/ID   py connects: {"peer":ID}
    <n> mode fresh|stock           how the server dials back (see above)
    <n> query ID [MULTIADDR...]    py's query_server: asks ID to dial us back
                                   on these addresses (default: py's listen
                                   addresses), then py's update_status:
                                   {"status":S,"addr":A|null,"verdict":V}
                                   (S: ResponseStatus number; V: py's
                                   AutoNATStatus 0 unknown, 1 public,
                                   2 private)
    <n> check ID                   py's check_reachability([ID]):
                                   {"verdict":V}
    <n> raw ID HEX                 an AutoNAT stream to ID: writes the bytes
                                   HEX as they are (the caller frames them),
                                   reads one length-prefixed message (10 s):
                                   {"closed":true} when the stream ended
                                   without one, else {"closed":false,
                                   "type":T,"status":S|null,"text":X}
    <n> served                     the dial-back requests py's server handled:
                                   {"requests":[{"peer":ID,"addrs":[..],
                                   "observed":IP,"status":S,"addr":A|null,
                                   "dials":[{"addr":A,"ok":bool}]}]}
    <n> trap                       a plain TCP listener on 127.0.0.2 (port 0)
                                   that counts and closes what connects:
                                   {"port":P}
    <n> trapped                    {"connections":K} accepted by the trap
    <n> quit

Every command is bounded (30 s).  The program ends on stdin EOF, ``quit``,
or after ``--lifetime`` seconds (default 180), exit status 0.
"""

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kad_peer as K  # noqa: E402  (the stdin line reader, error text)
import peer as P  # noqa: E402  (the interop peer: host construction, output, I/O)

COMMAND_TIMEOUT = 30
# One fresh dial-back attempt (py's swarm retries a failed dial a few times).
DIAL_TIMEOUT = 10
MAX_MESSAGE = 64 * 1024


class Peer:
    """The host, py's AutoNAT service and what the commands need."""

    def __init__(self, host: Any) -> None:
        from libp2p.host.autonat.autonat import AutoNATService

        self.host = host
        self.service = AutoNATService(host, serve=True, confirmations=1)
        self.stock_try_dial = self.service._try_dial
        self.served: list[dict[str, Any]] = []
        self.current_dials: list[dict[str, Any]] = []
        self.trap_count = 0
        self.trap_port: int | None = None
        self.nursery: Any = None
        handle_dial = self.service._handle_dial

        async def recorded(message: Any, observed_ip: Any, is_relayed: bool) -> Any:
            from libp2p.peer.id import ID

            self.current_dials = []
            response = await handle_dial(message, observed_ip, is_relayed)
            answer = response.dialResponse
            self.served.append(
                {
                    "peer": str(ID(message.dial.peer.id)) if message.dial.peer.id else None,
                    "addrs": [P._maddr_str(bytes(a)) for a in message.dial.peer.addrs],
                    "observed": observed_ip,
                    "relayed": is_relayed,
                    "status": int(answer.status),
                    "addr": P._maddr_str(bytes(answer.addr)) if answer.HasField("addr") else None,
                    "dials": self.current_dials,
                }
            )
            return response

        self.service._handle_dial = recorded
        self.set_mode("fresh")

    def set_mode(self, mode: str) -> None:
        if mode == "stock":
            self.service._try_dial = self.stock_try_dial
        elif mode == "fresh":
            self.service._try_dial = self.fresh_try_dial
        else:
            raise ValueError(f"unknown mode {mode!r}")

    async def fresh_try_dial(self, peer_id: Any, addrs: list[bytes]) -> bytes | None:
        """py's _try_dial with a real dial: a new connection per address."""
        network = self.host.get_network()
        for raw in addrs:
            addr = P.L.multiaddr.Multiaddr(raw)
            record: dict[str, Any] = {"addr": str(addr), "ok": False}
            self.current_dials.append(record)
            try:
                with P.trio.fail_after(DIAL_TIMEOUT):
                    conn = await network.dial_addr(addr, peer_id)
            except Exception as e:  # noqa: BLE001 - a failed dial-back is an answer
                record["error"] = K.describe(e)
                continue
            record["ok"] = True
            with P.trio.move_on_after(2) as cs:
                cs.shield = True
                await conn.close()
            return bytes(raw)
        return None

    async def open_trap(self) -> int:
        trio = P.trio
        if self.trap_port is not None:
            return self.trap_port
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.2")

        async def handler(stream: Any) -> None:
            self.trap_count += 1
            await stream.aclose()

        self.nursery.start_soon(trio.serve_listeners, handler, listeners)
        self.trap_port = listeners[0].socket.getsockname()[1]
        return self.trap_port

    async def raw(self, peer_id: Any, payload: bytes) -> dict[str, Any]:
        from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
        from libp2p.host.autonat.pb.autonat_pb2 import Message
        from libp2p.utils.varint import read_varint_prefixed_bytes_limited

        stream = await self.host.new_stream(peer_id, [AUTONAT_PROTOCOL_ID])
        try:
            await stream.write(payload)
            try:
                with P.trio.fail_after(10):
                    frame = await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE)
            except P.trio.TooSlowError:
                raise
            except Exception as e:  # noqa: BLE001 - the server ended the stream
                return {"closed": True, "error": K.describe(e)}
        finally:
            with P.trio.move_on_after(2):
                await stream.close()
        answer = Message()
        answer.ParseFromString(frame)
        status = answer.dialResponse.status if answer.dialResponse.HasField("status") else None
        return {
            "closed": False,
            "type": int(answer.type),
            "status": int(status) if status is not None else None,
            "text": answer.dialResponse.statusText,
        }

    async def command(self, word: str, args: list[str]) -> dict[str, Any]:
        from libp2p.peer.id import ID

        if word == "connect":
            info = P.L.info_from_p2p_addr(P.L.multiaddr.Multiaddr(args[0]))
            await self.host.connect(info)
            return {"peer": str(info.peer_id)}
        if word == "mode":
            self.set_mode(args[0])
            return {}
        if word == "query":
            addrs = [P.L.multiaddr.Multiaddr(a).to_bytes() for a in args[1:]] or None
            status, addr = await self.service.query_server(ID.from_base58(args[0]), addrs, timeout=25)
            self.service.update_status()
            return {
                "status": status,
                "addr": P._maddr_str(addr) if addr else None,
                "verdict": self.service.get_status(),
            }
        if word == "check":
            return {"verdict": await self.service.check_reachability([ID.from_base58(args[0])])}
        if word == "raw":
            return await self.raw(ID.from_base58(args[0]), bytes.fromhex(args[1]))
        if word == "served":
            return {"requests": self.served}
        if word == "trap":
            return {"port": await self.open_trap()}
        if word == "trapped":
            return {"connections": self.trap_count}
        raise ValueError(f"unknown command {word!r}")


async def run(args: argparse.Namespace) -> int:
    trio = P.trio
    host = P.make_host(args.seed)
    # Room for a dial-back connection beside the requester's own (peer.py allows one per peer).
    host.get_network().connection_config.max_connections_per_peer = 4
    listen = P.L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with host.run(listen_addrs=[listen]):
        await P.stop_auto_connector(host)
        peer = Peer(host)
        addrs = [a for a in host.get_transport_addrs() if "/ip4/" in str(a)]
        if not addrs:
            raise RuntimeError(f"could not listen on {listen}")
        P.emit(f"LISTEN {addrs[0]}/p2p/{host.get_id()}")
        async with trio.open_nursery() as nursery:
            peer.nursery = nursery
            await K.serve_commands(args.lifetime, COMMAND_TIMEOUT, lambda word, rest: peer.command(word, rest))
            nursery.cancel_scope.cancel()
        await K.close_host(host)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=P.parse_seed, required=True)
    parser.add_argument("--lifetime", type=float, default=180)
    return K.run_main(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
