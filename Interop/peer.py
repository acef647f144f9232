#!/usr/bin/env python3
"""py-libp2p interop peer for PointSub's Swift interop tests.

Built on py-libp2p 0.8.1 (PyPI package ``libp2p``), pinned in
Interop/requirements.txt and installed by scripts/setup-interop.sh into
Interop/.venv.  Run as::

    Interop/.venv/bin/python Interop/peer.py id     --seed N
    Interop/.venv/bin/python Interop/peer.py listen --seed N [--port P]
    Interop/.venv/bin/python Interop/peer.py dial   <multiaddr/p2p/ID> --seed N --test T [...]

Only TCP on 127.0.0.1, Noise (/noise) as the only security protocol and
Yamux (/yamux/1.0.0) as the only muxer are offered, so every test goes
through the real stack (no plaintext, no mplex, no secio, no TLS).

stdout carries only the machine-readable lines described below; everything
else (logs, diagnostics) goes to stderr.  Python-level ``print`` calls inside
the library are redirected to stderr as well.

listen: prints ``LISTEN <multiaddr>/p2p/<id>`` once listening, then one JSON
line per identified peer::

    {"event":"identified","peer":..,"agent":..,"protocol_version":..,
     "protocols":[..],"listen_addrs":[..],"observed_addr":..}

and serves /echo/1.0.0, /ipfs/ping/1.0.0 (py built-in), /ipfs/id/1.0.0
(py built-in, agent version overridden), /ipfs/id/push/1.0.0 (py built-in)
and /perf/1.0.0 until stdin reaches EOF, SIGTERM/SIGINT arrives, or
``--lifetime`` seconds pass; then it exits 0.

dial: runs one test and prints exactly one JSON line: ``{"ok":true,...}``
(exit 0) or ``{"ok":false,"error":"..."}`` (exit 1; 3 on --timeout; 2 on bad
arguments).  --timeout (default 60 s) covers connect + test::

    echo      {"ok":true,"bytes":<--size, per stream>,"streams":K,"seconds":s}
    ping      {"ok":true,"rtts_ms":[...]}
    identify  {"ok":true,"peer":..,"agent":..,"protocol_version":..,
               "protocols":[..],"listen_addrs":[..],"observed_addr":..,
               "public_key_matches":bool}
    perf      {"ok":true,"upload_bytes":B,"download_bytes":B,"seconds":s}

"seconds" is measured from opening the stream(s) to the last byte/EOF;
observed_addr is null when the remote sent none; addresses that do not parse
as multiaddrs are given as "0x<hex>".

py-libp2p 0.8.1 quirks this program works around or relies on (measured by
reading the 0.8.1 sources and running py<->py; see also the reply that came
with this file):

* Identify: the built-in responder frames its response with a uvarint length
  prefix, writes it in a single write and then closes its write side (FIN).
  The built-in requester (run automatically on every new connection, in both
  directions) reads one uvarint-prefixed message; if that fails it falls
  back to ``stream.read()`` of whatever is left and parses it as raw
  protobuf.  It only stores public key, listen addrs, protocols and the
  signed peer record in the peerstore - agent/protocol version and
  observed_addr are dropped.  We therefore wrap the function it calls
  (``basic_host.update_peerstore_from_identify``) to see the full message.
* Identify is skipped for a peer whose protocols are already cached in the
  peerstore (``_has_cached_protocols``), so a peer that reconnects with the
  same peer ID would never be identified again.  We clear the peer's cached
  protocols when its last connection closes, and we also run identify
  ourselves if the built-in one has not reported within a few seconds.
* The agent version is a module constant
  (``libp2p.identity.identify.identify.AGENT_VERSION``, "py-libp2p/0.8.1")
  read at response time; we overwrite it.
* A host that does not listen delays every identify response by 0.5 s
  (it waits for ``get_addrs()`` to become non-empty), so the dial mode
  listens on 127.0.0.1:0 too.
* ``NetStream.read(n)`` returns *up to* n bytes (whatever is buffered), and
  signals EOF by raising ``StreamEOF`` (never by returning b"").  A reset
  surfaces as ``StreamReset``.
* ``NetStream.close()`` is only a yamux half-close (FIN) on the yamux muxer;
  ``close_write()`` is the explicit half-close and reading afterwards works,
  so half-close is fully supported in both directions.
* Yamux as a sender never exceeds the send window and, when the window is 0,
  polls every 10 ms and raises after 5 s without a WINDOW_UPDATE (the
  stream is then reset by our error handling).  ``write_all`` below only
  ever hands py as many bytes as the current send window allows, so py's
  5 s limit never fires; we apply our own, longer stall limit
  (``--window-stall``, default 30 s).
* Yamux as a receiver does not enforce its receive window (it logs a
  warning and buffers anyway) and grants credit only as the application
  reads.  An echo that reads a chunk and then blocks writing it back stops
  granting credit to the peer while it waits for credit itself: if the peer
  writes everything before reading, both sides stall (py resets after 5 s).
  Our echo server therefore decouples reading from writing (a reader task
  feeding an unbounded in-memory queue, a writer task draining it), and our
  echo client writes and reads concurrently.
* The built-in perf server treats any read error (including a reset) as the
  end of the upload and answers anyway; we serve /perf/1.0.0 with our own
  strict handler instead.
* The built-in ping responder allows at most 2 concurrent ping streams per
  peer and closes a stream after 10 s without a ping; its client returns
  whole milliseconds (0 on loopback), so our ping client measures itself.
* ``host.connect()`` waits 250 ms (happy-eyeballs delay) unless
  ``max_connections_per_peer=1``; the swarm's AutoConnector re-dials peers
  from the peerstore (e.g. a disconnected Swift peer) - we stop it.
* ``host.new_stream()`` dials if there is no connection; the fallback
  identify only runs on an existing connection.
* Multistream: the dialer does not pipeline (it waits for the
  ``/multistream/1.0.0`` echo before proposing a protocol); the listener
  accepts pipelined proposals.  Noise: no extensions are sent.
* Any yamux GoAway (whatever the code) makes py drop the connection at once.
* A yamux RST that arrives while the stream's receive buffer is empty makes
  py forget the stream, and the next read raises *EOF*, not reset
  (``read_some`` below detects it via ``reset_received``).  When a
  connection dies, every stream is marked FIN'd and reset and its unread
  buffered data is dropped.  DATA frames for unknown stream IDs are dropped
  silently (no RST).
* ``new_host()`` by default offers Noise, TLS, secio and plaintext, and
  yamux + mplex; we pass ``sec_opt``/``muxer_opt`` with Noise/Yamux only.
* ``listen()`` on a port in use only logs an error and returns normally; we
  check the listener list ourselves.
* A failed dial is retried 3 times with backoff (RetryConfig), after which
  the peer sits in a 60 s negative dial cache.
* Importing ``libp2p`` takes 0.7-2 s (it imports QUIC, WebRTC, ... too);
  ``peer.py id`` does not import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import struct
import sys
import threading
import time
from typing import Any

AGENT_VERSION = "py-libp2p-interop/0.8.1"
ECHO_PROTOCOL = "/echo/1.0.0"
PERF_PROTOCOL = "/perf/1.0.0"
PING_PROTOCOL = "/ipfs/ping/1.0.0"
IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"

READ_CHUNK = 64 * 1024
WRITE_CHUNK = 64 * 1024
PING_SIZE = 32

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_TIMEOUT = 3

# The real stdout; sys.stdout is pointed at stderr so that nothing but our
# own protocol lines can ever reach stdout.
_OUT = sys.stdout
sys.stdout = sys.stderr
_out_lock = threading.Lock()

log = logging.getLogger("interop")


def emit(line: str) -> None:
    with _out_lock:
        _OUT.write(line + "\n")
        _OUT.flush()


def emit_json(obj: dict[str, Any]) -> None:
    emit(json.dumps(obj, separators=(",", ":")))


_result_emitted = False


def emit_result(obj: dict[str, Any]) -> None:
    """dial mode: print the single result line (only the first call prints)."""
    global _result_emitted
    with _out_lock:
        if _result_emitted:
            return
        _result_emitted = True
        _OUT.write(json.dumps(obj, separators=(",", ":")) + "\n")
        _OUT.flush()


# --------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------


def seed_to_secret(seed: int) -> bytes:
    """Ed25519 secret key (seed) = 32-byte little-endian encoding of N."""
    if seed < 0 or seed >= 1 << 256:
        raise ValueError("seed must be in [0, 2^256)")
    return seed.to_bytes(32, "little")


def fast_peer_id(seed: int) -> str:
    """Peer ID without importing libp2p (which takes ~2 s to import).

    identity multihash (0x00, len 36) of the protobuf PublicKey
    {Type: Ed25519 (1), Data: 32-byte key}; base58btc.  Cross-checked against
    libp2p's ID.from_pubkey by the self-test in the listen/dial modes.
    """
    import base58
    from nacl.signing import SigningKey

    pub = bytes(SigningKey(seed_to_secret(seed)).verify_key)
    pb = b"\x08\x01\x12\x20" + pub
    return base58.b58encode(b"\x00" + bytes([len(pb)]) + pb).decode()


def parse_seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}")
    if value < 0 or value >= 1 << 256:
        raise argparse.ArgumentTypeError("seed must be in [0, 2^256)")
    return value


# --------------------------------------------------------------------------
# Helpers that need libp2p / trio (imported lazily in main)
# --------------------------------------------------------------------------

trio: Any = None
L: Any = None  # namespace with the libp2p names we use


def _import_libp2p() -> None:
    global trio, L
    import types

    import trio as _trio
    import multiaddr

    import libp2p
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.serialization import deserialize_public_key
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.host import basic_host
    from libp2p.identity.identify import identify as identify_mod
    from libp2p.identity.identify.pb.identify_pb2 import Identify
    from libp2p.network.config import ConnectionConfig
    from libp2p.network.stream.exceptions import StreamEOF, StreamReset
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
    from libp2p.security.noise.transport import (
        PROTOCOL_ID as NOISE_PROTOCOL_ID,
        Transport as NoiseTransport,
    )
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID, Yamux

    trio = _trio
    L = types.SimpleNamespace(**locals())


class TestFailure(Exception):
    pass


async def read_some(stream: Any, n: int = READ_CHUNK) -> bytes:
    """Read up to n bytes; b"" means a clean EOF (py raises StreamEOF).

    py 0.8.1 quirk: when a yamux RST arrives while nothing is buffered, py
    drops the stream's bookkeeping and the next read raises *EOF*, not reset.
    The YamuxStream object still has reset_received set (and, unlike after a
    FIN, recv_closed unset), so we turn that back into an error.  When the
    whole connection dies, py marks every stream FIN'd *and* reset and drops
    their unread buffers; that also reads as EOF here (recv_closed is set),
    and the callers' byte counts catch any truncation.
    """
    try:
        return await stream.read(n)
    except L.StreamEOF:
        ms = getattr(stream, "muxed_stream", None)
        if getattr(ms, "reset_received", False) and not getattr(ms, "recv_closed", True):
            raise L.StreamReset("stream reset by the peer (RST before FIN)")
        return b""


async def read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await read_some(stream, n - len(buf))
        if not chunk:
            raise TestFailure(f"unexpected EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


WINDOW_STALL = 30.0


async def write_all(stream: Any, data: bytes) -> None:
    """Write data, never asking py's yamux for more than the send window.

    py's YamuxStream.write resets (raises) after 5 s at a zero send window;
    handing it at most ``send_window`` bytes means it never waits, and we wait
    here instead with our own (longer) limit.  Only one task writes to a given
    stream, and the window only grows behind our back, so the check is safe.
    """
    ms = getattr(stream, "muxed_stream", None)
    if ms is None or not hasattr(ms, "send_window"):
        await stream.write(data)
        return
    view = memoryview(data)
    off, total = 0, len(data)
    while off < total:
        if ms.send_window <= 0 and not (ms.closed or ms.send_closed):
            with trio.move_on_after(WINDOW_STALL) as cs:
                while ms.send_window <= 0 and not (ms.closed or ms.send_closed):
                    await trio.sleep(0.002)
            if cs.cancelled_caught:
                raise TestFailure(
                    f"yamux send window stayed at 0 for {WINDOW_STALL:g} s "
                    f"(no WINDOW_UPDATE from the peer)"
                )
        if ms.closed or ms.send_closed:
            await stream.write(bytes(view[off:]))  # raises the proper error
            return
        n = min(ms.send_window, total - off)
        await stream.write(bytes(view[off : off + n]))
        off += n


def _maddr_str(raw: bytes) -> str:
    try:
        return str(L.multiaddr.Multiaddr(raw))
    except Exception:
        return "0x" + raw.hex()


def identify_to_dict(peer_id: Any, msg: Any) -> dict[str, Any]:
    observed = _maddr_str(msg.observed_addr) if msg.observed_addr else None
    return {
        "peer": str(peer_id),
        "agent": msg.agent_version,
        "protocol_version": msg.protocol_version,
        "protocols": list(msg.protocols),
        "listen_addrs": [_maddr_str(a) for a in msg.listen_addrs],
        "observed_addr": observed,
    }


def _uvarint_prefix(data: bytes) -> tuple[int, int] | None:
    """(length, prefix size) of a leading uvarint, or None if incomplete."""
    length = 0
    for i in range(min(len(data), 10)):
        length |= (data[i] & 0x7F) << (7 * i)
        if not data[i] & 0x80:
            return length, i + 1
    return None


def _parse_identify(raw: bytes) -> Any:
    msg = L.Identify()
    msg.ParseFromString(raw)
    return msg


async def request_identify(stream: Any, timeout: float = 10.0) -> Any:
    """Read one identify response from a negotiated /ipfs/id/1.0.0 stream.

    Spec (and go/rust/js/py): one uvarint-length-prefixed Identify message,
    then the responder closes the stream.  We stop reading as soon as the
    prefixed message is complete (so a responder that forgets to close does
    not make us hang), then check briefly for the close and log anomalies
    to stderr.  A raw message without prefix (old py) is accepted at EOF.
    """
    buf = bytearray()
    eof = False
    msg = None
    with trio.fail_after(timeout):
        while True:
            pre = _uvarint_prefix(bytes(buf[:10]))
            if pre is not None and pre[1] + pre[0] <= len(buf):
                try:
                    msg = _parse_identify(bytes(buf[pre[1] : pre[1] + pre[0]]))
                except Exception:
                    msg = None
                if msg is not None:
                    if len(buf) > pre[1] + pre[0]:
                        log.warning(
                            "identify: %d extra bytes after the message",
                            len(buf) - pre[1] - pre[0],
                        )
                    break
            chunk = await read_some(stream)
            if not chunk:
                eof = True
                break
            buf += chunk
            if len(buf) > 4 * 1024 * 1024:
                raise TestFailure("identify response larger than 4 MiB")
    if msg is None:
        if not buf:
            raise TestFailure("empty identify response")
        try:
            msg = _parse_identify(bytes(buf))
        except Exception as e:
            raise TestFailure(
                f"cannot parse identify response ({len(buf)} bytes, "
                f"starts {bytes(buf[:16]).hex()}): {e}"
            )
        log.warning("identify: response had no uvarint length prefix")
        return msg
    log.info("identify response: %d bytes, uvarint-prefixed", len(buf))
    if not eof:
        with trio.move_on_after(2) as cs:
            extra = await read_some(stream)
            if extra:
                log.warning("identify: extra data after the message: %d bytes", len(extra))
        if cs.cancelled_caught:
            log.warning("identify: responder did not close the stream within 2 s")
    return msg


# --------------------------------------------------------------------------
# Host construction
# --------------------------------------------------------------------------


def make_host(seed: int) -> Any:
    L.identify_mod.AGENT_VERSION = AGENT_VERSION
    sk = L.Ed25519PrivateKey.from_bytes(seed_to_secret(seed))
    kp = L.KeyPair(sk, sk.get_public_key())
    pid = L.ID.from_pubkey(kp.public_key)
    if str(pid) != fast_peer_id(seed):  # self-test of the fast `id` path
        raise RuntimeError("peer id mismatch between libp2p and fast_peer_id")
    sec_opt = {
        L.NOISE_PROTOCOL_ID: L.NoiseTransport(
            kp, noise_privkey=L.new_x25519().private_key
        )
    }
    muxer_opt = {L.YAMUX_PROTOCOL_ID: L.Yamux}
    host = L.libp2p.new_host(
        key_pair=kp,
        sec_opt=sec_opt,
        muxer_opt=muxer_opt,
        listen_addrs=[L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")],
        connection_config=L.ConnectionConfig(max_connections_per_peer=1),
        disable_identify_address_discovery=True,
    )
    host.set_stream_handler(ECHO_PROTOCOL, handle_echo)
    host.set_stream_handler(PERF_PROTOCOL, handle_perf)
    return host


async def stop_auto_connector(host: Any) -> None:
    ac = getattr(host.get_network(), "auto_connector", None)
    if ac is not None:
        await ac.stop()


def _peer_of(stream: Any) -> str:
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:
        return "?"


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


async def handle_echo(stream: Any) -> None:
    """Echo: read until EOF, writing back as we read, then close.

    Reading and writing are decoupled so that reading (which is what grants
    yamux credit to the peer) never waits for our own writes to get credit.
    """
    peer = _peer_of(stream)
    send, recv = trio.open_memory_channel(math.inf)
    total = 0

    async def reader() -> None:
        nonlocal total
        async with send:
            while True:
                chunk = await read_some(stream)
                if not chunk:
                    return
                total += len(chunk)
                await send.send(chunk)

    async def writer() -> None:
        async with recv:
            async for chunk in recv:
                await write_all(stream, chunk)

    try:
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            n.start_soon(writer)
        await stream.close()
        log.info("echo: %s: echoed %d bytes", peer, total)
    except Exception as e:
        log.warning("echo: %s: %r after %d bytes; resetting", peer, e, total)
        await _reset(stream)


async def handle_perf(stream: Any) -> None:
    """perf server (libp2p/specs perf/perf.md)."""
    peer = _peer_of(stream)
    try:
        header = await read_exactly(stream, 8)
        to_send = struct.unpack(">Q", header)[0]
        received = 0
        while True:
            chunk = await read_some(stream)
            if not chunk:
                break
            received += len(chunk)
        block = bytes(WRITE_CHUNK)
        remaining = to_send
        while remaining > 0:
            n = min(remaining, WRITE_CHUNK)
            await write_all(stream, block[:n])
            remaining -= n
        await stream.close()
        log.info("perf: %s: received %d, sent %d", peer, received, to_send)
    except Exception as e:
        log.warning("perf: %s: %r; resetting", peer, e)
        await _reset(stream)


async def _reset(stream: Any) -> None:
    """Reset a stream, even from a cancelled context (bounded to 2 s)."""
    try:
        with trio.move_on_after(2) as cs:
            cs.shield = True
            await stream.reset()
    except Exception:
        pass


# --------------------------------------------------------------------------
# listen mode
# --------------------------------------------------------------------------


class IdentifyReporter:
    """Prints one "identified" JSON line per connection of a remote peer.

    Source: py's own automatic identify (hooked); if that has not reported a
    connection after FALLBACK_AFTER seconds, we run identify ourselves on that
    very connection (never through host.new_stream, which could dial).
    """

    FALLBACK_AFTER = 3.0

    def __init__(self, host: Any) -> None:
        self.host = host
        self.reported: set[Any] = set()  # SwarmConn objects already reported
        self.nursery: Any = None

    def install(self) -> None:
        original = L.basic_host.update_peerstore_from_identify
        reporter = self

        async def wrapped(peerstore: Any, peer_id: Any, msg: Any) -> None:
            await original(peerstore, peer_id, msg)
            conns = reporter.host.get_network().get_connections(peer_id)
            reporter.report(conns[0] if conns else None, peer_id, msg, "built-in")

        L.basic_host.update_peerstore_from_identify = wrapped

        class Notifee(L.libp2p.abc.INotifee):
            async def connected(self, network: Any, conn: Any) -> None:
                pid = conn.muxed_conn.peer_id
                log.info("connected: %s (%s)", pid, _conn_addrs(conn))
                if reporter.nursery is not None:
                    reporter.nursery.start_soon(reporter.fallback, conn)

            async def disconnected(self, network: Any, conn: Any) -> None:
                pid = conn.muxed_conn.peer_id
                log.info("disconnected: %s", pid)
                reporter.reported.discard(conn)
                if not network.get_connections(pid):
                    try:  # so py's built-in identify runs again on reconnect
                        network.peerstore.clear_protocol_data(pid)
                    except Exception:
                        pass

            async def opened_stream(self, network: Any, stream: Any) -> None:
                pass

            async def closed_stream(self, network: Any, stream: Any) -> None:
                pass

            async def listen(self, network: Any, maddr: Any) -> None:
                pass

            async def listen_close(self, network: Any, maddr: Any) -> None:
                pass

        self.host.get_network().register_notifee(Notifee())

    def report(self, conn: Any, peer_id: Any, msg: Any, source: str) -> None:
        if conn is not None:
            if conn in self.reported:
                return
            self.reported.add(conn)
        d = identify_to_dict(peer_id, msg)
        log.info("identified %s (%s identify): agent=%r", peer_id, source, d["agent"])
        emit_json({"event": "identified", **d})

    async def fallback(self, conn: Any) -> None:
        await trio.sleep(self.FALLBACK_AFTER)
        if conn in self.reported or conn.is_closed:
            return
        peer_id = conn.muxed_conn.peer_id
        log.warning(
            "built-in identify did not report %s within %.0f s; asking myself",
            peer_id,
            self.FALLBACK_AFTER,
        )
        try:
            with trio.fail_after(15):
                stream = await conn.new_stream()
                try:
                    await self.host.multiselect_client.select_one_of(
                        [IDENTIFY_PROTOCOL], L.MultiselectCommunicator(stream), 10
                    )
                    msg = await request_identify(stream)
                except BaseException:
                    await _reset(stream)
                    raise
                await stream.close()
            self.report(conn, peer_id, msg, "own")
        except Exception as e:
            log.warning("own identify of %s failed: %s", peer_id, _describe(e))


def _conn_addrs(conn: Any) -> str:
    try:
        return ", ".join(str(a) for a in conn.get_transport_addresses())
    except Exception:
        return "?"


async def wait_stdin_eof() -> None:
    # os.read on fd 0, not sys.stdin: a thread blocked inside the buffered
    # reader holds its lock, and interpreter shutdown then aborts with
    # "could not acquire lock for <stdin>" when we exit on SIGTERM.
    def blocking() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass

    await trio.to_thread.run_sync(blocking, abandon_on_cancel=True)


async def run_listen(args: argparse.Namespace) -> int:
    host = make_host(args.seed)
    listen = L.multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{args.port}")
    reporter = IdentifyReporter(host)
    reporter.install()
    reason = "?"
    async with trio.open_nursery() as nursery:
        reporter.nursery = nursery
        async with host.run(listen_addrs=[listen]):
            await stop_auto_connector(host)
            addrs = [a for a in host.get_transport_addrs() if "/ip4/" in str(a)]
            if not addrs:  # py logs the bind error and carries on
                raise RuntimeError(f"could not listen on {listen} (port in use?)")
            emit(f"LISTEN {addrs[0]}/p2p/{host.get_id()}")
            log.info("protocols: %s", list(host.get_mux().get_protocols()))

            done = trio.Event()

            async def on_stdin() -> None:
                nonlocal reason
                if args.ignore_stdin:
                    await trio.sleep_forever()
                await wait_stdin_eof()
                reason = "stdin EOF"
                done.set()

            async def on_signal() -> None:
                nonlocal reason
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for s in sigs:
                        reason = signal.Signals(s).name
                        done.set()
                        return

            async def on_lifetime() -> None:
                nonlocal reason
                if args.lifetime <= 0:
                    await trio.sleep_forever()
                await trio.sleep(args.lifetime)
                reason = f"lifetime of {args.lifetime:g} s reached"
                done.set()

            async with trio.open_nursery() as waiters:
                waiters.start_soon(on_stdin)
                waiters.start_soon(on_signal)
                waiters.start_soon(on_lifetime)
                await done.wait()
                waiters.cancel_scope.cancel()
            log.info("shutting down: %s", reason)
            start_watchdog(10.0, EXIT_OK, None)
            nursery.cancel_scope.cancel()
            with trio.move_on_after(5) as cs:
                cs.shield = True
                await host.close()
    return EXIT_OK


# --------------------------------------------------------------------------
# dial mode
# --------------------------------------------------------------------------


def pattern_block(stream_idx: int, k: int) -> bytes:
    """Block k (WRITE_CHUNK bytes) of the pseudo-random data of echo stream i.

    Generated on the fly by writer and reader alike, so any --size works
    without holding the data in memory.
    """
    return random.Random((0x5EED << 48) | (stream_idx << 32) | k).randbytes(WRITE_CHUNK)


async def test_echo(host: Any, pid: Any, args: argparse.Namespace) -> dict[str, Any]:
    size, streams = args.size, args.streams

    async def one(idx: int) -> None:
        stream = await host.new_stream(pid, [ECHO_PROTOCOL])
        got = 0
        try:

            async def writer() -> None:
                for k, off in enumerate(range(0, size, WRITE_CHUNK)):
                    block = pattern_block(idx, k)[: min(WRITE_CHUNK, size - off)]
                    await write_all(stream, block)
                await stream.close_write()

            async def reader() -> None:
                nonlocal got
                cur_k, expected = -1, b""
                while True:
                    chunk = await read_some(stream)
                    if not chunk:
                        break
                    if got + len(chunk) > size:
                        raise TestFailure(
                            f"stream {idx}: received more than the {size} bytes sent"
                        )
                    pos = 0
                    while pos < len(chunk):
                        k, o = divmod(got, WRITE_CHUNK)
                        if k != cur_k:
                            cur_k, expected = k, pattern_block(idx, k)
                        n = min(len(chunk) - pos, WRITE_CHUNK - o)
                        if chunk[pos : pos + n] != expected[o : o + n]:
                            raise TestFailure(
                                f"stream {idx}: echoed data differs in "
                                f"[{got},{got + n})"
                            )
                        pos += n
                        got += n
                if got != size:
                    raise TestFailure(
                        f"stream {idx}: EOF after {got} of {size} bytes"
                    )

            async with trio.open_nursery() as n:
                n.start_soon(writer)
                n.start_soon(reader)
            await stream.close()
        except BaseException:
            await _reset(stream)
            raise

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for i in range(streams):
            n.start_soon(one, i)
    secs = time.perf_counter() - t0
    return {"ok": True, "bytes": size, "streams": streams, "seconds": round(secs, 6)}


async def test_ping(host: Any, pid: Any, args: argparse.Namespace) -> dict[str, Any]:
    stream = await host.new_stream(pid, [PING_PROTOCOL])
    rtts = []
    try:
        for _ in range(args.count):
            payload = os.urandom(PING_SIZE)
            t0 = time.perf_counter()
            await write_all(stream, payload)
            pong = await read_exactly(stream, PING_SIZE)
            rtt = (time.perf_counter() - t0) * 1000
            if pong != payload:
                raise TestFailure("ping payload mismatch")
            rtts.append(round(rtt, 3))
        await stream.close()
    except BaseException:
        await _reset(stream)
        raise
    return {"ok": True, "rtts_ms": rtts}


async def test_identify(
    host: Any, pid: Any, args: argparse.Namespace
) -> dict[str, Any]:
    stream = await host.new_stream(pid, [IDENTIFY_PROTOCOL])
    try:
        msg = await request_identify(stream, timeout=max(1.0, args.timeout))
        await stream.close()
    except BaseException:
        await _reset(stream)
        raise
    matches = False
    if msg.public_key:
        try:
            key = L.deserialize_public_key(msg.public_key)
            matches = L.ID.from_pubkey(key) == pid
        except Exception as e:
            log.warning("cannot decode identify public_key: %r", e)
    return {"ok": True, **identify_to_dict(pid, msg), "public_key_matches": matches}


async def test_perf(host: Any, pid: Any, args: argparse.Namespace) -> dict[str, Any]:
    upload, download = args.upload, args.download
    t0 = time.perf_counter()
    stream = await host.new_stream(pid, [PERF_PROTOCOL])
    got = 0
    try:

        async def writer() -> None:
            await write_all(stream, struct.pack(">Q", download))
            block = bytes(WRITE_CHUNK)
            remaining = upload
            while remaining > 0:
                n = min(remaining, WRITE_CHUNK)
                await write_all(stream, block[:n])
                remaining -= n
            await stream.close_write()

        async def reader() -> None:
            nonlocal got
            while True:
                chunk = await read_some(stream)
                if not chunk:
                    break
                got += len(chunk)
                if got > download:
                    raise TestFailure(
                        f"perf: received more than the {download} bytes requested"
                    )

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            n.start_soon(reader)
        if got != download:
            raise TestFailure(f"perf: EOF after {got} of {download} bytes")
        await stream.close()
    except BaseException:
        await _reset(stream)
        raise
    secs = time.perf_counter() - t0
    return {
        "ok": True,
        "upload_bytes": upload,
        "download_bytes": got,
        "seconds": round(secs, 6),
    }


TESTS = {
    "echo": test_echo,
    "ping": test_ping,
    "identify": test_identify,
    "perf": test_perf,
}


async def run_dial(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    try:
        maddr = L.multiaddr.Multiaddr(args.multiaddr)
        info = L.info_from_p2p_addr(maddr)
    except Exception as e:
        result = {"ok": False, "error": f"bad multiaddr: {_describe(e)}"}
        emit_result(result)
        return EXIT_FAIL, result
    host = make_host(args.seed)
    result: dict[str, Any] = {"ok": False, "error": "did not run"}
    code = EXIT_FAIL
    async with host.run(listen_addrs=[L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        await stop_auto_connector(host)
        with trio.move_on_after(args.timeout) as cs:
            try:
                t0 = time.perf_counter()
                await host.connect(info)
                log.info(
                    "connected to %s in %.1f ms",
                    info.peer_id,
                    (time.perf_counter() - t0) * 1000,
                )
                result = await TESTS[args.test](host, info.peer_id, args)
                code = EXIT_OK
            except Exception as e:
                log.debug("test failed", exc_info=True)
                result = {"ok": False, "error": _describe(e)}
                code = EXIT_FAIL
        if cs.cancelled_caught:
            result = {"ok": False, "error": f"timeout after {args.timeout:g} s"}
            code = EXIT_TIMEOUT
        # Report first, then tear down (bounded).
        emit_result(result)
        start_watchdog(10.0, code, None)
        with trio.move_on_after(5) as cs2:
            cs2.shield = True
            await host.close()
    return code, result


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        out: list[BaseException] = []
        for x in e.exceptions:
            out.extend(_leaves(x))
        return out
    return [e]


def _describe(e: BaseException) -> str:
    """One-line description: leaf exceptions of (trio) exception groups,
    each with up to 3 levels of __cause__/__context__."""
    descs = []
    for leaf in _leaves(e):
        parts: list[str] = []
        cur: BaseException | None = leaf
        while cur is not None and len(parts) < 4:
            text = f"{type(cur).__name__}: {cur}".rstrip(": ")
            if not parts or parts[-1] != text:
                parts.append(text)
            cur = cur.__cause__ or cur.__context__
        descs.append(" <- ".join(parts))
    counted: dict[str, int] = {}
    for d in descs:  # e.g. 64 streams failing the same way -> one entry
        counted[d] = counted.get(d, 0) + 1
    text = "; ".join(d if n == 1 else f"{d} (x{n})" for d, n in counted.items())
    return text if len(text) <= 2000 else text[:1997] + "..."


# --------------------------------------------------------------------------
# process plumbing
# --------------------------------------------------------------------------

def start_watchdog(seconds: float, code: int, line: dict[str, Any] | None) -> None:
    """Hard exit if the process is still alive after `seconds`."""
    def fire() -> None:
        if line is not None:
            emit_result(line)
        sys.stderr.write(f"peer.py: watchdog: forcing exit after {seconds:g} s\n")
        sys.stderr.flush()
        os._exit(code)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()


class _Parser(argparse.ArgumentParser):
    """Usage errors of `dial` still produce the one JSON result line."""

    json_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if _Parser.json_errors:
            emit_result({"ok": False, "error": f"usage: {message}"})
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="peer.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--seed", type=parse_seed, required=True,
                        help="Ed25519 secret key = 32-byte little-endian N")
        sp.add_argument("-v", "--verbose", action="count", default=0,
                        help="stderr logging: -v info, -vv debug (incl. libp2p)")

    sp = sub.add_parser("id", help="print the peer ID for --seed")
    common(sp)

    sp = sub.add_parser("listen", help="listen on 127.0.0.1 and serve")
    common(sp)
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--lifetime", type=float, default=900.0,
                    help="exit after this many seconds (0 = no limit)")
    sp.add_argument("--ignore-stdin", action="store_true",
                    help="do not exit on stdin EOF (manual runs)")
    sp.add_argument("--window-stall", type=float, default=WINDOW_STALL)

    sp = sub.add_parser("dial", help="dial a peer and run one test")
    sp.add_argument("multiaddr", help="…/p2p/<peer id>")
    common(sp)
    sp.add_argument("--test", choices=sorted(TESTS), required=True)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.add_argument("--size", type=int, default=1024 * 1024, help="echo: bytes per stream")
    sp.add_argument("--streams", type=int, default=1, help="echo: concurrent streams")
    sp.add_argument("--count", type=int, default=5, help="ping: round trips")
    sp.add_argument("--upload", type=int, default=1024 * 1024, help="perf: bytes up")
    sp.add_argument("--download", type=int, default=1024 * 1024, help="perf: bytes down")
    sp.add_argument("--window-stall", type=float, default=WINDOW_STALL)
    return p


def setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.handlers.clear()
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    lp = logging.getLogger("libp2p")
    lp.handlers.clear()
    lp.addHandler(handler)
    lp.propagate = False
    lp.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    # py sets this one to INFO explicitly; it is chatty and irrelevant here.
    logging.getLogger("libp2p.network.auto_connector").setLevel(
        logging.DEBUG if verbosity >= 2 else logging.WARNING
    )


def main(argv: list[str] | None = None) -> int:
    global WINDOW_STALL
    argv = sys.argv[1:] if argv is None else argv
    _Parser.json_errors = "dial" in argv
    args = build_parser().parse_args(argv)
    if args.cmd == "id":
        emit(fast_peer_id(args.seed))
        return EXIT_OK

    if args.cmd == "dial":
        for name in ("size", "streams", "count", "upload", "download"):
            if getattr(args, name) < 0:
                emit_result({"ok": False, "error": f"--{name} must be >= 0"})
                return EXIT_FAIL
        if args.timeout <= 0:
            emit_result({"ok": False, "error": "--timeout must be > 0"})
            return EXIT_FAIL
        # Last line of defence: whatever happens (even a wedged event loop),
        # print a result and exit shortly after --timeout.
        hard = args.timeout + 20.0
        start_watchdog(
            hard, EXIT_TIMEOUT, {"ok": False, "error": f"hard timeout after {hard:g} s"}
        )
    WINDOW_STALL = args.window_stall

    setup_logging(args.verbose)
    _import_libp2p()
    setup_logging(args.verbose)  # libp2p's import-time setup_logging resets it

    if args.cmd == "listen":
        try:
            return trio.run(run_listen, args)
        except KeyboardInterrupt:
            return EXIT_OK
        except BaseException as e:  # noqa: BLE001
            log.debug("listen failed", exc_info=True)
            sys.stderr.write(f"peer.py listen: error: {_describe(e)}\n")
            return EXIT_FAIL

    try:
        code, _ = trio.run(run_dial, args)
    except BaseException as e:  # noqa: BLE001 - must always print one line
        emit_result({"ok": False, "error": _describe(e)})
        return EXIT_FAIL
    return code


if __name__ == "__main__":
    sys.exit(main())
