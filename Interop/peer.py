#!/usr/bin/env python3
"""py-libp2p interop peer for PointSub's Swift interop tests.

Built on py-libp2p 0.8.1 (PyPI package ``libp2p``), pinned in
Interop/requirements.txt and installed by scripts/setup-interop.sh into
Interop/.venv.  Run as::

    Interop/.venv/bin/python Interop/peer.py id     --seed N [--key-type K]
    Interop/.venv/bin/python Interop/peer.py listen --seed N [--key-type K] [--port P] [--transport ws]
    Interop/.venv/bin/python Interop/peer.py dial   <multiaddr/p2p/ID> --seed N [--key-type K] --test T [...]

--key-type (default ed25519) picks the identity's key type; the secret is the
same 32 bytes for both (the little-endian encoding of N): the Ed25519 seed, or
the secp256k1 scalar read big-endian (N = 0 is invalid for secp256k1).

Only TCP on 127.0.0.1 (or, with ``--transport ws``, WebSocket over TCP on
127.0.0.1: ``/ip4/127.0.0.1/tcp/P/ws``; with ``--transport wss`` WebSocket over
TLS, ``/ip4/127.0.0.1/tcp/P/tls/ws``, with ``--tls-cert``/``--tls-key`` for a
listener and ``--tls-ca`` for a dialer), Noise (/noise) as the security protocol (or TLS,
/tls/1.0.0, with ``--security tls``; both with ``--security noise,tls``) and
Yamux (/yamux/1.0.0) as the only muxer are offered, so every test goes
through the real stack (no plaintext, no mplex, no secio).

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

listen also serves PointSub request/response (docs/PROTOCOL.md) on
/pointsub/reverse/1.0.0 (response = payload reversed byte-wise),
/pointsub/upper/1.0.0 (response = payload with ASCII a-z upper-cased) and
/pointsub/fail/1.0.0 (always an error message, code 1 ``handler``, text
``py handler failed: <payload as UTF-8, invalid bytes -> U+FFFD>`` cut to
64 KiB at a character boundary): any number of requests per stream, one at a
time; maximum block size ``--max-block-size`` (default 32 MiB) checked on
``length`` and ``original`` before any payload byte is read (error
``tooLarge``, then FIN, then RST); compressed and plain requests accepted
(inflating at most ``original`` + 1 bytes); replies zlib-compressed (level 6)
when the payload is >= 1 KiB and 10 * compressed <= 9 * original; error
``malformed`` + FIN + RST on a bad kind, reserved flag bits, a non-minimal or
over-long (> 9 bytes) uvarint, bad zlib data, an inflated size other than
``original``, or bytes after the end of the zlib stream.  EOF between two
messages: the server closes its side; EOF inside a message: RST, no reply.
``--pointsub-rst-only`` leaves out the FIN between the error and the RST (to
test clients against the bare "error, then RST" of the spec).

dial: runs one test and prints exactly one JSON line: ``{"ok":true,...}``
(exit 0) or ``{"ok":false,"error":"..."}`` (exit 1; 3 on --timeout; 2 on bad
arguments).  --timeout (default 60 s) covers connect + test::

    echo      {"ok":true,"bytes":<--size, per stream>,"streams":K,"seconds":s}
    ping      {"ok":true,"rtts_ms":[...]}
    identify  {"ok":true,"peer":..,"agent":..,"protocol_version":..,
               "protocols":[..],"listen_addrs":[..],"observed_addr":..,
               "public_key_matches":bool}
    perf      {"ok":true,"upload_bytes":B,"download_bytes":B,"seconds":s}
    pointsub  {"ok":true,"requests":N,"compressed_requests":k,
               "compressed_replies":m,"stream_reused":bool,"seconds":s}
              (+ "error_code":3,"after_error":"reset" when --size exceeds
              --max-block-size; then "requests" is 1)
    pointsub-raw
              {"ok":true,"kind":K,"flags":F,"payload_hex":..,"header_hex":..,
               ["original":n,] ["code":c,"message":..,] "after":A}
              or {"ok":true,"reset":true,"how":"reset"|"eof"}

pointsub: ``--protocol P`` (one of the three above) ``[--count N]`` (default
5) ``[--size B]`` (default 1 MiB; 0 allowed) ``[--compressible]``
``[--fail-prefix TEXT]`` ``[--max-block-size B]``.  Opens ONE stream and sends
N requests on it one after the other; request i carries B bytes of
pseudo-random data (``random.Random(0x50534220 << 32 | i)``) or, with
--compressible, the text ``PointSub request <i>: the quick brown fox jumps
over the lazy dog. `` repeated and cut to B bytes.  Requests are compressed by
the same rule as replies.  Each reply is checked: reverse -> reversed
payload, upper -> upper-cased payload, fail -> error code 1 with exactly
``--fail-prefix`` (default ``py handler failed: ``) + payload as text, cut to
64 KiB (a success for this test).  If B exceeds --max-block-size the server
must instead answer the first request with a ``tooLarge`` error and reset the
stream (then the test stops after that request).  After the last reply the
client closes its write side and requires the server to close its side
(EOF, no reset).  ``compressed_requests``/``compressed_replies`` count
messages sent/received with flags bit 0 set; ``stream_reused`` is true when
>= 2 requests were answered on the one stream.  A reply whose length or
original exceeds our --max-block-size makes us reset and fail.

pointsub-raw: ``--protocol P`` (any ID) ``--hex HEX`` ``[--half-close]``.
Writes the bytes on a fresh stream (then, with --half-close, closes our write
side), reads one reply message and prints it: kind, flags, the payload
(decompressed if flagged) as hex, the header as received, and for errors the
code and message.  "after" is what the server did next within 2 s: "reset",
"eof" (it closed its side), "data" (it sent more) or "open" (nothing).  If
the stream ended before a reply, ``"reset":true`` with ``"how"`` telling a
reset from a close (EOF).

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

PointSub-specific quirks (measured py<->py):

* A yamux RST *without* a FIN before it makes py's ``read()`` raise
  StreamReset even while data that arrived before the RST is still buffered
  (Yamux.read_stream checks ``reset_received`` before the buffer unless
  ``recv_closed`` is set).  In practice a reply followed at once by a RST was
  lost every time (6/6 runs): py processes both frames before the reading
  task runs.  So (1) our server sends its tooLarge/malformed error, then a
  FIN, then the RST (after FIN+RST py still returns the buffered data), and
  (2) our client (PsReader) reads the data left in py's stream buffer after
  a StreamReset before reporting the reset.  --pointsub-rst-only makes the
  server send the bare "error, RST" to exercise (2).
* ``read(n)`` returns whatever is buffered, at most n: a 32 MiB payload
  arrives in ~520 reads of at most 65,524 bytes (one yamux frame: py's writer
  cuts every write into frames of 64 KiB - 12 bytes) when the reader keeps
  up, and in reads of up to the receive window (256 KiB at first) when it
  does not.  Headers are read with read(1) so that nothing past the header is
  taken before the size checks.
* Every ``read()`` sends a WINDOW_UPDATE for the bytes read (py's
  PY_YAMUX_RELEASE_ON_READ is on by default), even a 1-byte one, so a peer
  sees several tiny WINDOW_UPDATEs per PointSub header.  A small round trip
  py<->py takes ~7 ms on loopback (100 requests on one stream: 0.7 s); how
  much of that these frames cost was not measured.
* A 32 MiB write is no problem through ``write_all`` (window-sized pieces);
  py never sends more than the peer's window.  When the server refuses a
  big request without reading it, the client's writer sits at a zero window
  until the server's RST marks the stream closed, then fails; our client
  therefore writes and reads each request concurrently and never cancels a
  write in progress (cancelling py inside a frame write could cut the frame
  and break the connection).
* zlib at level 6 takes ~1 s per 32 MiB of random data (which then does not
  qualify), ~0.15 s for 32 MiB of repetitive text.
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
import zlib
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


def fast_peer_id(seed: int, key_type: str = "ed25519") -> str:
    """Peer ID without importing libp2p (which takes ~2 s to import).

    identity multihash (0x00, len) of the protobuf PublicKey {Type: Ed25519
    (1), Data: 32-byte key} or {Type: Secp256k1 (2), Data: 33-byte compressed
    point}; base58btc.  Cross-checked against libp2p's ID.from_pubkey by the
    self-test in the listen/dial modes.
    """
    import base58

    if key_type == "secp256k1":
        import coincurve  # py-libp2p's secp256k1 backend

        pub = coincurve.PrivateKey(seed_to_secret(seed)).public_key.format(True)
        pb = b"\x08\x02\x12\x21" + pub
    else:
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
    from libp2p.crypto.secp256k1 import Secp256k1PrivateKey
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


def local_addr(transport: str, port: int = 0) -> Any:
    """Our own address on 127.0.0.1 for --transport (tcp, ws or wss)."""
    suffix = {"ws": "/ws", "wss": "/tls/ws"}.get(transport, "")
    return L.multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}{suffix}")


def tls_contexts(args: argparse.Namespace) -> dict[str, Any]:
    """new_host() arguments for --transport wss: the listener's certificate
    (--tls-cert/--tls-key) and the dialer's trust root (--tls-ca; hostname or
    IP checked against the certificate)."""
    import ssl

    out: dict[str, Any] = {}
    if getattr(args, "tls_cert", None):
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(args.tls_cert, args.tls_key)
        out["tls_server_config"] = server
    if getattr(args, "tls_ca", None):
        out["tls_client_config"] = ssl.create_default_context(cafile=args.tls_ca)
    return out


def make_host(
    seed: int, key_type: str = "ed25519", security: str = "noise", transport: str = "tcp",
    tls: dict[str, Any] | None = None,
) -> Any:
    L.identify_mod.AGENT_VERSION = AGENT_VERSION
    if key_type == "secp256k1":
        sk = L.Secp256k1PrivateKey.from_bytes(seed_to_secret(seed))
    else:
        sk = L.Ed25519PrivateKey.from_bytes(seed_to_secret(seed))
    kp = L.KeyPair(sk, sk.get_public_key())
    pid = L.ID.from_pubkey(kp.public_key)
    if str(pid) != fast_peer_id(seed, key_type):  # self-test of the fast `id` path
        raise RuntimeError("peer id mismatch between libp2p and fast_peer_id")
    # --security: which security protocols the host offers, in this order (a dialer proposes
    # them in dict order).  TLS is py-libp2p's /tls/1.0.0 transport; it is given no muxers, so
    # its ALPN offers only "libp2p" and the muxer is negotiated with multistream-select
    # afterwards (py 0.8.1 does not use an ALPN-agreed muxer yet).
    sec_opt = {}
    for name in security.split(","):
        if name == "noise":
            sec_opt[L.NOISE_PROTOCOL_ID] = L.NoiseTransport(
                kp, noise_privkey=L.new_x25519().private_key
            )
        elif name == "tls":
            from libp2p.security.tls.transport import (
                PROTOCOL_ID as TLS_PROTOCOL_ID,
                TLSTransport,
            )

            sec_opt[TLS_PROTOCOL_ID] = TLSTransport(kp)
        else:
            raise ValueError(f"unknown security protocol {name!r}")
    muxer_opt = {L.YAMUX_PROTOCOL_ID: L.Yamux}
    host = L.libp2p.new_host(
        key_pair=kp,
        sec_opt=sec_opt,
        muxer_opt=muxer_opt,
        # py builds its transports from these addresses: a /ws one gives the
        # WebsocketTransport alone (which also dials /ws addresses), not TCP.
        listen_addrs=[local_addr(transport)],
        connection_config=L.ConnectionConfig(max_connections_per_peer=1),
        disable_identify_address_discovery=True,
        **(tls or {}),
    )
    host.set_stream_handler(ECHO_PROTOCOL, handle_echo)
    host.set_stream_handler(PERF_PROTOCOL, handle_perf)
    _note_identify_answers(host)
    return host


def _note_identify_answers(host: Any) -> None:
    """Wrap py's own identify responder so that the dial mode can tell when it
    has answered the remote's identify request: the Swift listener asks a few
    milliseconds after a connection opens, and a dialer that hangs up right
    after its test would otherwise race that request."""
    original = host.get_mux().handlers.get(IDENTIFY_PROTOCOL)
    if original is None:
        return
    host._identify_answered = None

    async def answer(stream: Any) -> None:
        try:
            await original(stream)
        finally:
            event = getattr(host, "_identify_answered", None)
            if event is not None:
                event.set()

    host.set_stream_handler(IDENTIFY_PROTOCOL, answer)


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
# PointSub request/response (docs/PROTOCOL.md)
# --------------------------------------------------------------------------

PS_REVERSE = "/pointsub/reverse/1.0.0"
PS_UPPER = "/pointsub/upper/1.0.0"
PS_FAIL = "/pointsub/fail/1.0.0"
PS_PROTOCOLS = (PS_REVERSE, PS_UPPER, PS_FAIL)

PS_REQUEST, PS_RESPONSE, PS_ERROR = 0x01, 0x02, 0x03
PS_FLAG_COMPRESSED = 0x01
PS_CODES = {1: "handler", 2: "busy", 3: "tooLarge", 4: "malformed", 5: "timeout",
            6: "unavailable"}
PS_HANDLER, PS_TOO_LARGE, PS_MALFORMED = 1, 3, 4
PS_DEFAULT_MAX_BLOCK = 32 * 1024 * 1024
PS_MAX_BLOCK = PS_DEFAULT_MAX_BLOCK  # --max-block-size
PS_COMPRESS_MIN = 1024  # compress only payloads of at least 1 KiB ...
PS_MAX_ERROR_TEXT = 64 * 1024  # error message text: at most 64 KiB (UTF-8 bytes)
PS_UVARINT_MAX_BYTES = 9
PS_FAIL_PREFIX = "py handler failed: "
PS_RST_ONLY = False  # listen --pointsub-rst-only: no FIN between error and RST


class PsViolation(Exception):
    """The peer broke docs/PROTOCOL.md (server answers `malformed`)."""


class PsTooLarge(Exception):
    """`length` or `original` above the maximum block size."""


class PsEOF(Exception):
    """The stream ended inside a message (a connection error)."""


def ps_uvarint(n: int) -> bytes:
    if n < 0 or n >= 1 << 63:
        raise ValueError(f"uvarint out of range: {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ps_compress(payload: bytes) -> bytes | None:
    """zlib data if the rules say to compress (>= 1 KiB, saves >= 10 %), else None.

    zlib level 6 (the default).  "Saves at least 10 %" is evaluated exactly:
    10 * compressed <= 9 * original.
    """
    if len(payload) < PS_COMPRESS_MIN:
        return None
    c = zlib.compress(payload)
    return c if 10 * len(c) <= 9 * len(payload) else None


def ps_encode(kind: int, payload: bytes, compress: bool = True) -> tuple[bytes, bytes]:
    """(header, wire payload) of one message."""
    c = ps_compress(payload) if compress else None
    if c is None:
        return bytes([kind, 0]) + ps_uvarint(len(payload)), payload
    return (
        bytes([kind, PS_FLAG_COMPRESSED]) + ps_uvarint(len(c)) + ps_uvarint(len(payload)),
        c,
    )


def ps_decompress(data: bytes, original: int) -> bytes:
    """Inflate at most original + 1 bytes; anything but exactly `original`
    bytes from one complete zlib stream (no trailing bytes) is a violation."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, original + 1)  # max_length 0 would mean "no limit"
    except zlib.error as e:
        raise PsViolation(f"bad zlib data: {e}")
    if len(out) > original:
        raise PsViolation(f"payload inflates to more than original={original} bytes")
    if not d.eof:
        raise PsViolation(
            f"truncated zlib data (inflated {len(out)} of original={original} bytes)"
        )
    if len(out) != original:
        raise PsViolation(f"payload inflates to {len(out)} bytes, original={original}")
    if d.unused_data:
        raise PsViolation(f"{len(d.unused_data)} bytes after the end of the zlib data")
    return out


def ps_error_payload(code: int, text: str) -> bytes:
    return bytes([code]) + ps_error_text(text)


def ps_error_text(text: str) -> bytes:
    """UTF-8 text cut to at most 64 KiB at a character boundary."""
    b = text.encode("utf-8")
    if len(b) > PS_MAX_ERROR_TEXT:
        b = b[:PS_MAX_ERROR_TEXT].decode("utf-8", "ignore").encode("utf-8")
    return b


def ps_fail_text(payload: bytes, prefix: str = PS_FAIL_PREFIX) -> bytes:
    """Message of /pointsub/fail: prefix + payload decoded as UTF-8 (invalid
    sequences become U+FFFD, Python's "replace"), cut to 64 KiB."""
    return ps_error_text(prefix + payload.decode("utf-8", "replace"))


def ps_apply(protocol: str, payload: bytes) -> tuple[int, bytes]:
    """What our server answers: (kind, uncompressed payload)."""
    if protocol == PS_REVERSE:
        return PS_RESPONSE, payload[::-1]
    if protocol == PS_UPPER:
        return PS_RESPONSE, payload.upper()  # bytes.upper(): ASCII a-z only
    return PS_ERROR, bytes([PS_HANDLER]) + ps_fail_text(payload)


class PsMessage:
    def __init__(self, kind: int, flags: int, length: int, original: int | None,
                 header: bytes, payload: bytes) -> None:
        self.kind, self.flags, self.length, self.original = kind, flags, length, original
        self.header, self.payload = header, payload

    @property
    def compressed(self) -> bool:
        return bool(self.flags & PS_FLAG_COMPRESSED)


class PsReader:
    """Reads PointSub messages from a py NetStream, never past the current one.

    Headers are read with read(1) calls, payloads with read(remaining), so
    nothing beyond what the current message needs is taken from py's buffer.

    py 0.8.1 quirk: when a yamux RST arrives without a FIN before it, py's
    read() raises StreamReset even if data that arrived *before* the RST is
    still buffered (the buffer is kept in Yamux.stream_buffers, only not
    returned).  A server that answers `tooLarge`/`malformed` and resets right
    away would then lose its error reply at a py client depending on task
    scheduling.  On the first StreamReset we therefore hand out what is left
    in that buffer (it is all data the peer sent before its RST), then raise.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.salvage: bytearray | None = None
        self.salvaged = 0
        self.reads = 0
        self.read_bytes = 0
        self.max_read = 0

    async def read_up_to(self, n: int) -> bytes:
        """Up to n bytes; b"" at EOF; StreamReset after a reset."""
        if self.salvage is None:
            try:
                data = await read_some(self.stream, n)
            except L.StreamReset:
                ms = getattr(self.stream, "muxed_stream", None)
                buf = None
                try:
                    buf = ms.conn.stream_buffers.get(ms.stream_id)
                except Exception:
                    pass
                if not buf:
                    raise
                log.info("pointsub: stream reset with %d bytes still buffered; "
                         "reading them before reporting the reset", len(buf))
                self.salvage = buf
            else:
                self.reads += 1
                self.read_bytes += len(data)
                self.max_read = max(self.max_read, len(data))
                return data
        if not self.salvage:
            raise L.StreamReset("stream reset by the peer")
        data = bytes(self.salvage[:n])
        del self.salvage[:n]
        self.salvaged += len(data)
        return data

    async def read_exact(self, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await self.read_up_to(n - len(buf))
            if not chunk:
                raise PsEOF(f"stream ended inside {what} ({len(buf)} of {n} bytes)")
            buf += chunk
        return bytes(buf)

    async def read_uvarint(self, what: str, header: bytearray) -> int:
        value = 0
        for i in range(PS_UVARINT_MAX_BYTES):
            b = (await self.read_exact(1, what))[0]
            header.append(b)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise PsViolation(f"non-minimal uvarint in {what}: {header.hex()}")
                return value
        raise PsViolation(f"uvarint in {what} longer than {PS_UVARINT_MAX_BYTES} bytes")

    async def read_message(self, server: bool) -> PsMessage | None:
        """The next message; None on a clean EOF before its first byte.

        Raises PsViolation, PsTooLarge, PsEOF (EOF inside the message) or
        StreamReset.  Limits are checked before the payload is read.
        """
        first = await self.read_up_to(1)
        if not first:
            return None
        kind = first[0]
        allowed = (PS_REQUEST,) if server else (PS_RESPONSE, PS_ERROR)
        if kind not in allowed:
            raise PsViolation(f"unexpected message kind 0x{kind:02x}")
        header = bytearray(first)
        flags = (await self.read_exact(1, "the flags"))[0]
        header.append(flags)
        if flags & ~PS_FLAG_COMPRESSED:
            raise PsViolation(f"reserved flag bits set: 0x{flags:02x}")
        length = await self.read_uvarint("length", header)
        if length > PS_MAX_BLOCK:
            raise PsTooLarge(
                f"length {length} exceeds the maximum block size of {PS_MAX_BLOCK} bytes"
            )
        original = None
        if flags & PS_FLAG_COMPRESSED:
            original = await self.read_uvarint("original", header)
            if original > PS_MAX_BLOCK:
                raise PsTooLarge(
                    f"original {original} exceeds the maximum block size of "
                    f"{PS_MAX_BLOCK} bytes"
                )
        wire = await self.read_exact(length, "the payload")
        payload = wire if original is None else ps_decompress(wire, original)
        return PsMessage(kind, flags, length, original, bytes(header), payload)


async def ps_write(stream: Any, kind: int, payload: bytes) -> bool:
    """Write one message (compressed per the rules); True if compressed."""
    header, wire = ps_encode(kind, payload)
    await write_all(stream, header + wire)
    return bool(header[1] & PS_FLAG_COMPRESSED)


async def ps_refuse(stream: Any, code: int, text: str) -> None:
    """Error reply, then FIN, then RST.

    The FIN before the RST is a py workaround: a py reader keeps (and
    returns) buffered data after FIN+RST but not after a bare RST (see
    PsReader).  The RST still aborts the unread rest of the request.
    """
    try:
        with trio.fail_after(10):
            await ps_write(stream, PS_ERROR, ps_error_payload(code, text))
            if not PS_RST_ONLY:
                await stream.close_write()
    except Exception as e:
        log.info("pointsub: could not send the %s error: %r", PS_CODES[code], e)
    await _reset(stream)


def make_ps_handler(protocol: str) -> Any:
    async def handler(stream: Any) -> None:
        peer = _peer_of(stream)
        r = PsReader(stream)
        n = 0
        try:
            while True:
                try:
                    msg = await r.read_message(server=True)
                except PsTooLarge as e:
                    log.info("pointsub %s: %s: request %d too large: %s", protocol, peer, n, e)
                    await ps_refuse(stream, PS_TOO_LARGE, f"request too large: {e}")
                    return
                except PsViolation as e:
                    log.info("pointsub %s: %s: request %d malformed: %s", protocol, peer, n, e)
                    await ps_refuse(stream, PS_MALFORMED, f"malformed request: {e}")
                    return
                if msg is None:  # client closed its write side between messages
                    await stream.close()
                    log.info("pointsub %s: %s: %d requests, closed (reads: %d, "
                             "largest %d bytes)", protocol, peer, n, r.reads, r.max_read)
                    return
                kind, payload = ps_apply(protocol, msg.payload)
                compressed = await ps_write(stream, kind, payload)
                n += 1
                log.debug("pointsub %s: %s: request %d: %d bytes%s -> %d bytes%s", protocol,
                          peer, n, len(msg.payload), " (compressed)" if msg.compressed else "",
                          len(payload), " (compressed)" if compressed else "")
        except Exception as e:  # EOF inside a message, reset, write failure
            log.info("pointsub %s: %s: %s after %d requests; resetting", protocol, peer,
                     _describe(e), n)
            await _reset(stream)

    return handler


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
    host = make_host(args.seed, args.key_type, args.security, args.transport, tls_contexts(args))
    for proto in PS_PROTOCOLS:
        host.set_stream_handler(proto, make_ps_handler(proto))
    listen = local_addr(args.transport, args.port)
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


def ps_request_payload(i: int, size: int, compressible: bool) -> bytes:
    """Payload of request i: pseudo-random bytes, or repetitive ASCII text
    (with lower-case letters, so /pointsub/upper changes it) that zlib
    shrinks to well under 10 % once it is at least 1 KiB."""
    if compressible:
        unit = f"PointSub request {i}: the quick brown fox jumps over the lazy dog. ".encode()
        return (unit * (size // len(unit) + 1))[:size]
    return random.Random((0x50534220 << 32) | i).randbytes(size)


async def ps_stream_end(r: PsReader, timeout: float, linger: bool = True) -> str:
    """How the peer ends the stream after a reply: "reset", "eof" (FIN),
    "data" (it sent more) or "open" (nothing within `timeout`).  After an
    EOF, `linger` waits up to 1 s for a RST right behind the FIN."""
    with trio.move_on_after(timeout):
        try:
            more = await r.read_up_to(1)
        except L.StreamReset:
            return "reset"
        if more:
            return "data"
        if not linger:
            return "eof"
        # EOF.  A RST right behind the FIN (as our server sends) only shows
        # up as a flag on the yamux stream.
        ms = getattr(r.stream, "muxed_stream", None)
        with trio.move_on_after(min(1.0, timeout)):
            while not getattr(ms, "reset_received", False):
                await trio.sleep(0.01)
            return "reset"
        return "eof"
    return "open"


def _ps_describe_reply(msg: PsMessage) -> str:
    if msg.kind == PS_ERROR and msg.payload:
        code = msg.payload[0]
        text = msg.payload[1:201].decode("utf-8", "replace")
        return f"error code {code} ({PS_CODES.get(code, 'unknown')}): {text!r}"
    return f"kind 0x{msg.kind:02x}, {len(msg.payload)} payload bytes"


async def test_pointsub(host: Any, pid: Any, args: argparse.Namespace) -> dict[str, Any]:
    proto, size, count = args.protocol, args.size, args.count
    if proto not in PS_PROTOCOLS:
        raise TestFailure(f"--test pointsub: unknown --protocol {proto!r}")
    oversize = size > PS_MAX_BLOCK  # the server must refuse it (tooLarge, then reset)
    t0 = time.perf_counter()
    stream = await host.new_stream(pid, [proto])
    r = PsReader(stream)
    sent = compressed_requests = compressed_replies = 0
    end = None
    try:
        for i in range(count):
            payload = ps_request_payload(i, size, args.compressible)
            write_error: list[BaseException] = []
            wrote = trio.Event()
            reply: list[PsMessage | None] = []

            async def writer() -> None:
                nonlocal compressed_requests
                try:
                    if await ps_write(stream, PS_REQUEST, payload):
                        compressed_requests += 1
                except Exception as e:  # e.g. reset after an early error reply
                    write_error.append(e)
                wrote.set()

            async def reader() -> None:
                try:
                    reply.append(await r.read_message(server=False))
                except PsTooLarge as e:  # we reset the stream (below) and report
                    raise TestFailure(f"reply {i} too large for us: {e}")
                except PsViolation as e:
                    raise TestFailure(f"reply {i} malformed: {e}")
                except PsEOF as e:
                    raise TestFailure(f"reply {i}: {e}")

            # Write and read concurrently: a server may answer (tooLarge,
            # malformed) before it has read the whole request.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                try:
                    await reader()
                except BaseException:
                    if write_error:
                        log.info("pointsub: write failed: %s", _describe(write_error[0]))
                    raise
                if not wrote.is_set():
                    # Early reply (e.g. tooLarge): the server resets the
                    # stream, which ends the writer.  It is not cancelled:
                    # cancelling py inside a frame write could cut the frame.
                    log.info("pointsub: reply %d arrived before the request was written", i)
                    with trio.move_on_after(5):
                        await wrote.wait()
                    if not wrote.is_set():
                        await _reset(stream)
            sent += 1
            msg = reply[0]
            if msg is None:
                raise TestFailure(f"request {i}: stream closed without a reply"
                                  + (f" (write: {_describe(write_error[0])})"
                                     if write_error else ""))
            if msg.compressed:
                compressed_replies += 1
            if oversize:
                if msg.kind != PS_ERROR or msg.payload[:1] != bytes([PS_TOO_LARGE]):
                    raise TestFailure(f"request {i} ({size} bytes > {PS_MAX_BLOCK}): "
                                      f"expected a tooLarge error, got {_ps_describe_reply(msg)}")
                end = await ps_stream_end(r, 5.0)
                # docs/PROTOCOL.md: after a refusal the server closes its side and MAY reset
                # later (the Swift server after 2 s); either way the stream must have ended.
                if end not in ("reset", "eof"):
                    raise TestFailure(f"tooLarge error not followed by the end of the stream (stream: {end})")
                break
            if write_error:
                raise TestFailure(f"request {i}: write failed: {_describe(write_error[0])}")
            if proto == PS_FAIL:
                if msg.kind != PS_ERROR or not msg.payload:
                    raise TestFailure(f"request {i}: expected an error, got "
                                      f"{_ps_describe_reply(msg)}")
                code, text = msg.payload[0], msg.payload[1:]
                want = ps_fail_text(payload, args.fail_prefix)
                if code != PS_HANDLER or text != want:
                    raise TestFailure(
                        f"request {i}: expected error code 1 with {len(want)} bytes of text "
                        f"{want[:80]!r}..., got {_ps_describe_reply(msg)} "
                        f"({len(text)} bytes of text)")
            else:
                if msg.kind != PS_RESPONSE:
                    raise TestFailure(f"request {i}: expected a response, got "
                                      f"{_ps_describe_reply(msg)}")
                want = payload[::-1] if proto == PS_REVERSE else payload.upper()
                if msg.payload != want:
                    at = next((k for k, (a, b) in enumerate(zip(msg.payload, want)) if a != b),
                              min(len(msg.payload), len(want)))
                    raise TestFailure(
                        f"request {i}: wrong response ({len(msg.payload)} bytes, expected "
                        f"{len(want)}; first difference at byte {at})")
        if not oversize:
            # End the exchange: close our write side; the server must close its.
            await stream.close_write()
            # (py forgets a stream once both sides sent FIN, so a RST behind
            # the server's FIN could not be seen here anyway: no linger.)
            end = await ps_stream_end(r, 5.0, linger=False)
            if end != "eof":
                raise TestFailure(f"after our close the server's side went {end!r}, "
                                  f"expected a close (EOF)")
            await stream.close()
    except BaseException:
        await _reset(stream)
        raise
    secs = time.perf_counter() - t0
    log.info("pointsub: %d reads, largest %d bytes, %d bytes salvaged after a reset",
             r.reads, r.max_read, r.salvaged)
    result: dict[str, Any] = {
        "ok": True,
        "requests": sent,
        "compressed_requests": compressed_requests,
        "compressed_replies": compressed_replies,
        "stream_reused": sent >= 2,
    }
    if oversize:
        result.update({"error_code": PS_TOO_LARGE, "after_error": end})
    result["seconds"] = round(secs, 6)
    return result


async def test_pointsub_raw(host: Any, pid: Any, args: argparse.Namespace) -> dict[str, Any]:
    try:
        data = bytes.fromhex("".join(args.hex.split()))
    except ValueError as e:
        raise TestFailure(f"--hex: {e}")
    stream = await host.new_stream(pid, [args.protocol])
    r = PsReader(stream)
    try:
        async def writer() -> None:
            try:
                await write_all(stream, data)
                if args.half_close:
                    await stream.close_write()
            except Exception as e:
                log.info("pointsub-raw: write failed: %s", _describe(e))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            try:
                msg = await r.read_message(server=False)
            except L.StreamReset:
                msg = "reset"
            except PsEOF as e:
                raise TestFailure(f"incomplete reply: {e}")
            except PsTooLarge as e:
                raise TestFailure(f"reply too large for us: {e}")
            except PsViolation as e:
                raise TestFailure(f"malformed reply: {e}")
        if msg is None or msg == "reset":
            await _reset(stream)
            return {"ok": True, "reset": True, "how": "eof" if msg is None else "reset"}
        result: dict[str, Any] = {
            "ok": True,
            "kind": msg.kind,
            "flags": msg.flags,
            "payload_hex": msg.payload.hex(),
            "header_hex": msg.header.hex(),
        }
        if msg.original is not None:
            result["original"] = msg.original
        if msg.kind == PS_ERROR and msg.payload:
            result["code"] = msg.payload[0]
            result["message"] = msg.payload[1:].decode("utf-8", "replace")
        result["after"] = await ps_stream_end(r, 2.0)
        await _reset(stream)
        return result
    except BaseException:
        await _reset(stream)
        raise


TESTS = {
    "echo": test_echo,
    "ping": test_ping,
    "identify": test_identify,
    "perf": test_perf,
    "pointsub": test_pointsub,
    "pointsub-raw": test_pointsub_raw,
}


async def run_dial(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    try:
        maddr = L.multiaddr.Multiaddr(args.multiaddr)
        info = L.info_from_p2p_addr(maddr)
    except Exception as e:
        result = {"ok": False, "error": f"bad multiaddr: {_describe(e)}"}
        emit_result(result)
        return EXIT_FAIL, result
    host = make_host(args.seed, args.key_type, args.security, args.transport, tls_contexts(args))
    answered = trio.Event()
    host._identify_answered = answered
    result: dict[str, Any] = {"ok": False, "error": "did not run"}
    code = EXIT_FAIL
    async with host.run(listen_addrs=[local_addr(args.transport)]):
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
        # Report first, then tear down (bounded): once the remote's identify
        # request was answered (at most 2 s, and not after the connection
        # ended), so that it learns who we are.
        emit_result(result)
        start_watchdog(10.0, code, None)
        with trio.move_on_after(2):
            while not answered.is_set() and host.get_network().get_connections(info.peer_id):
                await trio.sleep(0.005)
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
                        help="secret key = 32-byte little-endian N")
        sp.add_argument("--key-type", choices=["ed25519", "secp256k1"], default="ed25519",
                        help="identity key type (secp256k1: the 32 bytes as a big-endian scalar)")
        sp.add_argument("-v", "--verbose", action="count", default=0,
                        help="stderr logging: -v info, -vv debug (incl. libp2p)")
        sp.add_argument("--security", default="noise",
                        choices=["noise", "tls", "noise,tls", "tls,noise"],
                        help="security protocols offered, in order (default: noise)")

    def transport(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--transport", choices=("tcp", "ws", "wss"), default="tcp",
                        help="tcp (default), ws: WebSocket (/ip4/127.0.0.1/tcp/P/ws) or "
                             "wss: WebSocket over TLS (/ip4/127.0.0.1/tcp/P/tls/ws)")
        sp.add_argument("--tls-cert", help="wss listener: certificate chain (PEM)")
        sp.add_argument("--tls-key", help="wss listener: private key (PEM)")
        sp.add_argument("--tls-ca", help="wss dialer: the certificate to trust (PEM)")

    sp = sub.add_parser("id", help="print the peer ID for --seed")
    common(sp)

    sp = sub.add_parser("listen", help="listen on 127.0.0.1 and serve")
    common(sp)
    transport(sp)
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--lifetime", type=float, default=900.0,
                    help="exit after this many seconds (0 = no limit)")
    sp.add_argument("--ignore-stdin", action="store_true",
                    help="do not exit on stdin EOF (manual runs)")
    sp.add_argument("--window-stall", type=float, default=WINDOW_STALL)
    sp.add_argument("--max-block-size", type=int, default=PS_DEFAULT_MAX_BLOCK,
                    help="pointsub: maximum block size in bytes (default 32 MiB)")
    sp.add_argument("--pointsub-rst-only", action="store_true",
                    help="pointsub: send tooLarge/malformed errors followed by a bare "
                         "RST (no FIN before it)")

    sp = sub.add_parser("dial", help="dial a peer and run one test")
    sp.add_argument("multiaddr", help="…/p2p/<peer id>")
    common(sp)
    transport(sp)
    sp.add_argument("--test", choices=sorted(TESTS), required=True)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.add_argument("--size", type=int, default=1024 * 1024,
                    help="echo: bytes per stream; pointsub: bytes per request")
    sp.add_argument("--streams", type=int, default=1, help="echo: concurrent streams")
    sp.add_argument("--count", type=int, default=5,
                    help="ping: round trips; pointsub: requests on the one stream")
    sp.add_argument("--upload", type=int, default=1024 * 1024, help="perf: bytes up")
    sp.add_argument("--download", type=int, default=1024 * 1024, help="perf: bytes down")
    sp.add_argument("--window-stall", type=float, default=WINDOW_STALL)
    sp.add_argument("--protocol", help="pointsub, pointsub-raw: protocol ID")
    sp.add_argument("--compressible", action="store_true",
                    help="pointsub: repetitive text payloads instead of random bytes")
    sp.add_argument("--fail-prefix", default=PS_FAIL_PREFIX,
                    help="pointsub on /pointsub/fail/1.0.0: expected message prefix")
    sp.add_argument("--hex", help="pointsub-raw: bytes to write, as hex")
    sp.add_argument("--half-close", action="store_true",
                    help="pointsub-raw: close our write side after the bytes")
    sp.add_argument("--max-block-size", type=int, default=PS_DEFAULT_MAX_BLOCK,
                    help="pointsub: maximum block size in bytes (default 32 MiB)")
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
    global WINDOW_STALL, PS_MAX_BLOCK, PS_RST_ONLY
    argv = sys.argv[1:] if argv is None else argv
    _Parser.json_errors = "dial" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "id":
        emit(fast_peer_id(args.seed, args.key_type))
        return EXIT_OK

    if args.cmd == "dial":
        for name in ("size", "streams", "count", "upload", "download"):
            if getattr(args, name) < 0:
                emit_result({"ok": False, "error": f"--{name} must be >= 0"})
                return EXIT_FAIL
        if args.timeout <= 0:
            emit_result({"ok": False, "error": "--timeout must be > 0"})
            return EXIT_FAIL
        if args.test.startswith("pointsub") and not args.protocol:
            parser.error(f"--test {args.test} needs --protocol")
        if args.test == "pointsub" and args.protocol not in PS_PROTOCOLS:
            parser.error(f"--test pointsub: --protocol must be one of {', '.join(PS_PROTOCOLS)}")
        if args.test == "pointsub-raw" and args.hex is None:
            parser.error("--test pointsub-raw needs --hex")
        # Last line of defence: whatever happens (even a wedged event loop),
        # print a result and exit shortly after --timeout.
        hard = args.timeout + 20.0
        start_watchdog(
            hard, EXIT_TIMEOUT, {"ok": False, "error": f"hard timeout after {hard:g} s"}
        )
    WINDOW_STALL = args.window_stall
    if args.cmd in ("listen", "dial"):
        if not 0 <= args.max_block_size < 1 << 63:
            parser.error("--max-block-size must be in [0, 2^63)")
        PS_MAX_BLOCK = args.max_block_size
        PS_RST_ONLY = getattr(args, "pointsub_rst_only", False)

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
