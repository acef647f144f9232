#!/usr/bin/env python3
"""py-libp2p pubsub interop peer (floodsub / gossipsub) for PointSub's Swift tests.

Built on py-libp2p 0.8.1 (PyPI ``libp2p``, Interop/requirements.txt, installed
into Interop/.venv by scripts/setup-interop.sh).  A separate program from
Interop/peer.py with the same conventions: TCP on 127.0.0.1 only, Noise
(/noise) as the only security protocol and Yamux (/yamux/1.0.0) as the only
muxer, identities from ``--seed N`` (Ed25519 secret key = N as 32 little-endian
bytes; seed 1 = 12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X), and
stdout carrying only the machine-readable lines below (logs go to stderr;
``-v`` info, ``-vv`` debug including libp2p).  Run as::

    PY=Interop/.venv/bin/python
    $PY Interop/pubsub_peer.py listen --seed 1 --router gossipsub --topic t
    $PY Interop/pubsub_peer.py dial /ip4/127.0.0.1/tcp/P/p2p/ID --seed 2 \\
        --router gossipsub --topic t [--connect ADDR ...] \\
        [--publish-count 5 --publish-interval 0.2]

Both modes listen on 127.0.0.1 (``--port``, default 0) and subscribe to
``--topic`` (default ``interop``; ``--no-subscribe`` publishes without
subscribing, i.e. through gossipsub's fanout).  ``dial`` then connects to its
positional address and to every ``--connect ADDR`` (``listen`` accepts
``--connect`` too); a failed initial dial in ``dial`` mode ends the program
with status 1.

Options: ``--router floodsub|gossipsub`` (default gossipsub);
``--protocols P,P`` overrides the protocol IDs (default /floodsub/1.0.0, or
/meshsub/1.1.0,/meshsub/1.0.0 for gossipsub); ``--heartbeat S`` (gossipsub
heartbeat interval, default 1 s; py's own default is 120 s);
``--degree D --degree-low L --degree-high H`` (default 6/4/12);
``--signing strict|none`` (default strict, py's default: sign our messages and
drop unsigned or badly signed ones; ``none`` neither signs nor checks);
``--spam-protection`` (off by default, see the quirks);
``--no-author`` (with ``--signing none``: publish StrictNoSign messages, without
from and seqno - py 0.8.1 has no such mode, its strict_signing=False still
writes both; we build the message and hand it to py's push_msg as py's publish
does); ``--msg-id from-seqno|sha256`` (default from-seqno; sha256: the message
ID is the raw SHA-256 of the data, PointSub's StrictNoSign default - the seen
cache and the reported ``id`` use it, py's message cache does not, see the
quirks);
``--publish-count N --publish-interval S --publish-text T`` publish N
messages by ourselves, S seconds apart (default 0.5), text T with ``{i}``
(1-based) and ``{seed}`` replaced (default ``py {seed} msg {i}``), once
``--publish-wait-peers K`` peers (default 1) are ready for the topic (floodsub:
subscribed; gossipsub: in our mesh, or subscribed with --no-subscribe), waiting
at most ``--publish-wait S`` (default 30) and then publishing anyway;
``--exit-after-publish`` exits ``--linger`` seconds (default 1) after the last
of them; ``--lifetime S`` (default 900, 0 = none).  The program also ends on
stdin EOF (unless ``--ignore-stdin``; give it a pipe and keep it open), on
SIGTERM/SIGINT and on the ``quit`` command, exit status 0.

stdout, one line each (JSON objects written compactly, keys as shown):

    LISTEN /ip4/127.0.0.1/tcp/P/p2p/ID
    {"event":"dialed","addr":A,"peer":ID,"ok":true}
    {"event":"dialed","addr":A,"ok":false,"error":E}
    {"event":"connected","peer":ID,"protocol":P}
        py opened its own pubsub stream to ID on protocol P (py writes only on
        this stream; ID's subscriptions arrive on ID's stream to us)
    {"event":"disconnected","peer":ID}
    {"event":"peer","peer":ID,"topic":T,"subscribed":true|false}
        ID (un)subscribed to T (any topic), or left with its connection
    {"event":"message","from":ID,"topic":T,"seqno":N,"data":TEXT,
     "id":HEX,"signed":bool,"verified":bool}
        a message delivered to our subscription of T; ``from`` is the origin
        (not the forwarder), ``seqno`` the big-endian integer of the seqno
        bytes, ``data`` UTF-8 (invalid bytes as U+FFFD; then ``data_hex`` is
        added), ``id`` the message ID (from || seqno) in hex, ``signed``
        whether it carries a signature, ``verified`` whether py's
        signature_validator accepts it (always true with --signing strict,
        which drops the others before delivery).  Our own
        publications are not reported here (py delivers them locally too).
    {"event":"published","topic":T,"seqno":N,"data":TEXT}
    {"event":"publish_done","count":N}
    {"event":"control","dir":"in"|"out","peer":ID,"type":"graft"|"prune"|
     "ihave"|"iwant"|"idontwant","topic":T}      (gossipsub only; ihave/iwant
        carry "ids":n, prune "backoff":s; iwant/idontwant have no topic)
    {"event":"error","error":E}                  (a command that failed)
    {"event":"exit","reason":R,"received":N,"published":M}

stdin, one command per line: ``publish TEXT`` (to --topic), ``publish-to
TOPIC TEXT``, ``subscribe TOPIC``, ``unsubscribe TOPIC``, ``connect ADDR``,
``mesh [TOPIC]``, ``quit``; an empty line is ignored, and any other line is
published as it is (so ``publish TEXT`` is only needed for a text starting
with a command word).  ``mesh`` (gossipsub only) answers with

    {"event":"mesh","topic":T,"peers":[ID,...]}

py's mesh of T (default --topic) right now, sorted.  Tests wait on it rather
than on GRAFT events: py puts a peer in its mesh either by grafting it (a
GRAFT out) or by accepting its GRAFT (a GRAFT in, nothing sent back), and
which one happens depends on timing (py grafts a peer when it subscribes only
if py's own stream to that peer is already up; otherwise the peer's heartbeat
usually grafts py first).

Verified py <-> py with both routers by Interop/pubsub_selftest.py (three
instances in a line, messages both ways and forwarded, stdin commands,
--publish-count, exits).

py-libp2p 0.8.1 pubsub quirks, read in libp2p/pubsub/{pubsub,floodsub,
gossipsub,mcache,validators}.py of 0.8.1; the hello RPC (field 4), the replay
to late subscribers and the re-serialization used for signature checks were
also observed on the wire / in py:

* Framing: every RPC is one uvarint-length-prefixed protobuf (one write per
  RPC).  Inbound RPCs over 1 MiB (DefaultMaxMessageSize) reset the stream;
  outbound RPCs are split to fit 1 MiB.
* Streams: each side opens its OWN stream to the other as soon as a
  connection exists (network ``connected`` notifee, for inbound and outbound
  connections; retried with backoff while connected) and only WRITES on it;
  it only READS the stream the other side opened.  So a peer must open its own
  stream to py to be heard (py never reads the stream it opened) and must
  accept py's stream to learn py's subscriptions.  py proposes its protocols
  one at a time in order (multistream, no pipelining).
* First RPC ("hello") on py's stream: the subscriptions py holds, plus the
  NON-STANDARD field 4 ``senderRecord`` (bytes): a signed peer record envelope
  (libp2p Envelope, payload type /libp2p/routing-state-record).  py adds it to
  nearly every RPC it sends (announcements, publish, control).  If a peer
  sends py a field 4 that does not verify or names another peer, py drops the
  whole RPC ("invalid-signed-record").  Field 6492434 (testExtension) and
  control field 6/7/8 (v1.3 extensions/observe) exist in py's schema but are
  only sent on /meshsub/1.3.0+.
* Message ID: ``from || seqno`` (raw bytes, no separator; go's default too).
  py's message cache always uses from || seqno, whatever msg_id_constructor
  is given, so a custom ID function breaks IHAVE/IWANT - not offered here.
  IDs in IHAVE/IWANT are raw bytes; py hex-decodes an ID whose bytes are ASCII
  hex text (legacy py peers sent hex).
* seqno: 8 bytes big-endian, a counter starting at int(time.time()) + 1 when
  the Pubsub object is made.
* Signing (strict_signing=True by default, our --signing strict): py signs
  ``"libp2p-pubsub:" + Message{from, data, seqno, topicIDs}`` serialized by
  field number, and always sets ``key`` (the protobuf public key), even for
  Ed25519 where the key is in the peer ID.  It verifies by RE-SERIALIZING
  from/data/seqno/topics with from, data and seqno always present (an empty
  data is encoded as an empty field 2), so a signer that omits an empty
  field 2 or 3 fails py's check; the key comes from the peer ID when inlined,
  else from ``key``.  Unsigned or badly signed messages are dropped silently.
  With strict_signing=False py neither signs nor checks.
* py drops incoming messages for topics it is not subscribed to (it neither
  delivers nor forwards them), and messages claiming to be from itself.
* Local delivery: py's own publish is delivered to its own subscription.
* Seen cache: 120 s TTL.  Gossipsub also rejects "equivocation": the same
  from || seqno with other data or topics.  Every no-author (StrictNoSign)
  message has the same empty from || seqno, so py's gossipsub forwards only
  the first it handles (its own publications included); it still delivers
  them all to its subscription (delivery comes first).  Floodsub has no such
  check: the StrictNoSign interop tests use py's floodsub.
* Heartbeat: GossipSub(heartbeat_interval=120 s, initial delay 0.1 s) by
  default; we pass --heartbeat (1 s).  With adaptive_gossip_enabled (default
  on) py moves the interval to 30-60 s when its "network health" score is low;
  we turn it off.  eclipse_protection_enabled (default on) tries to graft for
  IP diversity, meaningless on 127.0.0.1; off here.
* Spam protection (default on): the gossipsub router forwards at most 10
  messages per second per (forwarder, topic) - including py's OWN publishes -
  and silently drops the rest (local delivery still happens).  Off here unless
  --spam-protection.
* Mesh: a GRAFT is answered with PRUNE (backoff 60 s) when py is not
  subscribed; a peer that announces a subscription is grafted at once (no
  heartbeat wait) while the mesh is below D_low - but only if py's own
  stream to that peer is already negotiated (py knows it speaks gossipsub).
  When the subscription arrives first, py grafts at its next heartbeat, and
  a peer whose heartbeat runs first GRAFTs py instead (py then sends no
  GRAFT at all); a PointSub node dialing py often ends up there.  Use the
  ``mesh`` command to see whom py has in its mesh.  GRAFT within 10 s of a PRUNE
  from py is "GRAFT flood": penalty and PRUNE.  PX is off (do_px=False).
* Gossipsub publishes only to mesh peers (fanout when not subscribed), but
  queues messages for connected peers whose subscription has not arrived yet
  and sends them when it does; and when a peer subscribes, py REPLAYS the
  message-cache window of that topic (the last 3 heartbeats) to it.  So a
  late subscriber can receive messages published before it joined, once.
  Floodsub does neither.
* IDONTWANT is only sent on /meshsub/1.2.0+, so not with our default protocols.
* Peers are removed only when their last connection closes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from contextlib import AsyncExitStack
from typing import Any

EXIT_OK = 0
EXIT_FAIL = 1

# The real stdout; sys.stdout is pointed at stderr so that nothing but our
# own lines (e.g. a print inside the library) can ever reach stdout.
_OUT = sys.stdout
sys.stdout = sys.stderr
_out_lock = threading.Lock()

log = logging.getLogger("pubsub-interop")

COMMANDS = ("publish", "publish-to", "subscribe", "unsubscribe", "connect", "mesh", "quit")


def emit(line: str) -> None:
    with _out_lock:
        _OUT.write(line + "\n")
        _OUT.flush()


def emit_json(obj: dict[str, Any]) -> None:
    emit(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def seed_to_secret(seed: int) -> bytes:
    """Ed25519 secret key (seed) = 32-byte little-endian encoding of N."""
    return seed.to_bytes(32, "little")


def parse_seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}")
    if value < 0 or value >= 1 << 256:
        raise argparse.ArgumentTypeError("seed must be in [0, 2^256)")
    return value


def describe(e: BaseException) -> str:
    """One line: the leaf exceptions of (trio) exception groups."""
    def leaves(x: BaseException) -> list[BaseException]:
        if isinstance(x, BaseExceptionGroup):
            return [leaf for sub in x.exceptions for leaf in leaves(sub)]
        return [x]

    text = "; ".join(f"{type(x).__name__}: {x}".rstrip(": ") for x in leaves(e))
    return text if len(text) <= 1000 else text[:997] + "..."


# --------------------------------------------------------------------------
# libp2p (imported lazily: importing it takes 1-2 s)
# --------------------------------------------------------------------------

trio: Any = None
L: Any = None


def import_libp2p() -> None:
    global trio, L
    import types

    import multiaddr
    import trio as _trio

    import libp2p
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub import floodsub as floodsub_mod, gossipsub as gossipsub_mod
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import Pubsub, get_peer_and_seqno_msg_id
    from libp2p.pubsub.validators import signature_validator
    from libp2p.security.noise.transport import (
        PROTOCOL_ID as NOISE_PROTOCOL_ID,
        Transport as NoiseTransport,
    )
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID, Yamux
    from libp2p.tools.anyio_service import background_trio_service

    trio = _trio
    L = types.SimpleNamespace(**locals())


def make_host(seed: int) -> Any:
    sk = L.Ed25519PrivateKey.from_bytes(seed_to_secret(seed))
    kp = L.KeyPair(sk, sk.get_public_key())
    sec_opt = {L.NOISE_PROTOCOL_ID: L.NoiseTransport(kp, noise_privkey=L.new_x25519().private_key)}
    return L.libp2p.new_host(
        key_pair=kp,
        sec_opt=sec_opt,
        muxer_opt={L.YAMUX_PROTOCOL_ID: L.Yamux},
        listen_addrs=[L.multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")],
        # One connection per peer: host.connect() skips its 250 ms happy-eyeballs wait.
        connection_config=L.ConnectionConfig(max_connections_per_peer=1),
        disable_identify_address_discovery=True,
    )


def make_router(args: argparse.Namespace) -> Any:
    if args.router == "floodsub":
        protocols = args.protocols or [L.floodsub_mod.PROTOCOL_ID]
        return L.floodsub_mod.FloodSub(protocols=protocols)
    protocols = args.protocols or [L.gossipsub_mod.PROTOCOL_ID_V11, L.gossipsub_mod.PROTOCOL_ID]
    return L.gossipsub_mod.GossipSub(
        protocols=protocols,
        degree=args.degree,
        degree_low=args.degree_low,
        degree_high=args.degree_high,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=args.heartbeat,
        do_px=False,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=args.spam_protection,
        eclipse_protection_enabled=False,
    )


# --------------------------------------------------------------------------
# Event reporting: wrappers around py's own methods (instance attributes
# shadow the class methods; py calls them through self.*)
# --------------------------------------------------------------------------


def pid(raw: bytes) -> str:
    try:
        return L.ID(raw).to_base58()
    except Exception:
        return "0x" + raw.hex()


def install_reporters(pubsub: Any, router: Any, gossip: bool) -> None:
    def subscribed_topics(peer: Any) -> set[str]:
        return {t for t, peers in pubsub.peer_topics.items() if peer in peers}

    handle_subscription = pubsub.handle_subscription

    def on_subscription(origin_id: Any, sub: Any) -> None:
        before = sub.topicid in subscribed_topics(origin_id)
        handle_subscription(origin_id, sub)
        after = sub.topicid in subscribed_topics(origin_id)
        if before != after:
            emit_json({"event": "peer", "peer": str(origin_id), "topic": sub.topicid, "subscribed": after})

    pubsub.handle_subscription = on_subscription

    forget_all = pubsub._forget_all_subscriptions

    def on_forget_all(peer_id: Any) -> None:
        topics = subscribed_topics(peer_id)
        forget_all(peer_id)
        for topic in sorted(topics):
            emit_json({"event": "peer", "peer": str(peer_id), "topic": topic, "subscribed": False})

    pubsub._forget_all_subscriptions = on_forget_all

    add_peer = router.add_peer

    def on_add_peer(peer_id: Any, protocol_id: Any) -> None:
        add_peer(peer_id, protocol_id)
        emit_json({"event": "connected", "peer": str(peer_id), "protocol": str(protocol_id)})

    router.add_peer = on_add_peer

    remove_peer = router.remove_peer

    def on_remove_peer(peer_id: Any) -> None:
        remove_peer(peer_id)
        emit_json({"event": "disconnected", "peer": str(peer_id)})

    router.remove_peer = on_remove_peer

    if not gossip:
        return

    def report_control(direction: str, peer: Any, control: Any) -> None:
        base = {"event": "control", "dir": direction, "peer": str(peer)}
        for g in control.graft:
            emit_json({**base, "type": "graft", "topic": g.topicID})
        for p in control.prune:
            emit_json({**base, "type": "prune", "topic": p.topicID, "backoff": p.backoff})
        for h in control.ihave:
            emit_json({**base, "type": "ihave", "topic": h.topicID, "ids": len(h.messageIDs)})
        for w in control.iwant:
            emit_json({**base, "type": "iwant", "ids": len(w.messageIDs)})
        for d in control.idontwant:
            emit_json({**base, "type": "idontwant", "ids": len(d.messageIDs)})

    handle_rpc = router.handle_rpc

    async def on_handle_rpc(rpc: Any, sender_peer_id: Any) -> None:
        if rpc.HasField("control"):
            report_control("in", sender_peer_id, rpc.control)
        await handle_rpc(rpc, sender_peer_id)

    router.handle_rpc = on_handle_rpc

    emit_control_message = router.emit_control_message

    async def on_emit_control(control_msg: Any, to_peer: Any) -> None:
        report_control("out", to_peer, control_msg)
        await emit_control_message(control_msg, to_peer)

    router.emit_control_message = on_emit_control


# --------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host: Any = None
        self.pubsub: Any = None
        self.router: Any = None
        self.nursery: Any = None
        self.subscriptions: dict[str, Any] = {}
        self.received = 0
        self.published = 0
        self.done: Any = None
        self.reason = "?"

    def finish(self, reason: str) -> None:
        if not self.done.is_set():
            self.reason = reason
            self.done.set()

    # -- subscriptions -----------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        if topic in self.subscriptions:
            return
        sub = await self.pubsub.subscribe(topic)
        self.subscriptions[topic] = sub
        self.nursery.start_soon(self.read_subscription, topic, sub)

    async def unsubscribe(self, topic: str) -> None:
        if self.subscriptions.pop(topic, None) is not None:
            await self.pubsub.unsubscribe(topic)

    async def read_subscription(self, topic: str, sub: Any) -> None:
        me = self.host.get_id().to_bytes()
        async for msg in sub:
            if msg.from_id == me:
                continue  # our own publication, delivered locally
            self.received += 1
            data = bytes(msg.data)
            event: dict[str, Any] = {
                "event": "message",
                "from": pid(msg.from_id) if msg.from_id else None,  # None: no author (StrictNoSign)
                "topic": topic,
                "seqno": int.from_bytes(msg.seqno, "big") if msg.seqno else None,
                "data": data.decode("utf-8", errors="replace"),
                "id": self.pubsub._msg_id_constructor(msg).hex(),
                "signed": bool(msg.signature),
                # py's own StrictSign check, run again here so that the report does not
                # depend on --signing (with strict, a message failing it never gets here).
                "verified": bool(msg.signature) and L.signature_validator(msg),
            }
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                event["data_hex"] = data.hex()
            emit_json(event)

    # -- publishing --------------------------------------------------------

    async def publish(self, topic: str, text: str) -> None:
        # py's publish() takes the next seqno before its first await, and trio
        # does not switch tasks in between: counter + 1 is this message's seqno.
        seqno = self.pubsub.counter + 1
        if self.args.no_author:
            # StrictNoSign: topic and data only, handed to push_msg as publish() does.
            seqno = None
            await self.pubsub.push_msg(
                self.pubsub.my_id, L.rpc_pb2.Message(data=text.encode(), topicIDs=[topic]))
        else:
            await self.pubsub.publish(topic, text.encode())
        self.published += 1
        emit_json({"event": "published", "topic": topic, "seqno": seqno, "data": text})

    def ready_peers(self, topic: str) -> int:
        if self.args.router == "gossipsub" and topic in self.router.mesh:
            return len(self.router.mesh[topic])
        return len(self.pubsub.peer_topics.get(topic, ()))

    async def auto_publish(self) -> None:
        args = self.args
        with trio.move_on_after(args.publish_wait):
            while self.ready_peers(args.topic) < args.publish_wait_peers:
                await trio.sleep(0.05)
        if self.ready_peers(args.topic) < args.publish_wait_peers:
            log.warning("publishing with %d ready peer(s)", self.ready_peers(args.topic))
        for i in range(1, args.publish_count + 1):
            if i > 1:
                await trio.sleep(args.publish_interval)
            await self.publish(args.topic, args.publish_text.format(i=i, seed=args.seed))
        emit_json({"event": "publish_done", "count": args.publish_count})
        if args.exit_after_publish:
            await trio.sleep(args.linger)
            self.finish("published everything")

    # -- dialing -----------------------------------------------------------

    async def dial(self, addr: str) -> bool:
        try:
            info = L.info_from_p2p_addr(L.multiaddr.Multiaddr(addr))
            with trio.fail_after(self.args.dial_timeout):
                await self.host.connect(info)
        except BaseException as e:  # noqa: BLE001 - reported, not raised
            if isinstance(e, trio.Cancelled):
                raise
            emit_json({"event": "dialed", "addr": addr, "ok": False, "error": describe(e)})
            return False
        emit_json({"event": "dialed", "addr": addr, "peer": str(info.peer_id), "ok": True})
        return True

    # -- stdin -------------------------------------------------------------

    async def read_commands(self) -> None:
        reader = LineReader()
        while True:
            line = await trio.to_thread.run_sync(reader.next_line, abandon_on_cancel=True)
            if line is None:
                if not self.args.ignore_stdin:
                    self.finish("stdin EOF")
                return
            try:
                await self.command(line)
            except Exception as e:  # noqa: BLE001 - one bad command must not end the peer
                emit_json({"event": "error", "error": f"{line!r}: {describe(e)}"})

    async def command(self, line: str) -> None:
        if not line.strip():
            return
        word, _, rest = line.partition(" ")
        if word == "publish":
            await self.publish(self.args.topic, rest)
        elif word == "publish-to":
            topic, _, text = rest.partition(" ")
            await self.publish(topic, text)
        elif word == "subscribe":
            await self.subscribe(rest.strip())
        elif word == "unsubscribe":
            await self.unsubscribe(rest.strip())
        elif word == "connect":
            await self.dial(rest.strip())
        elif word == "mesh":
            if self.args.router != "gossipsub":
                raise ValueError("mesh: floodsub has no mesh")
            topic = rest.strip() or self.args.topic
            peers = sorted(str(p) for p in self.router.mesh.get(topic, ()))
            emit_json({"event": "mesh", "topic": topic, "peers": peers})
        elif word == "quit":
            self.finish("quit command")
        else:
            await self.publish(self.args.topic, line)

    # -- main --------------------------------------------------------------

    async def run(self) -> int:
        args = self.args
        self.done = trio.Event()
        self.host = make_host(args.seed)
        self.router = make_router(args)
        self.pubsub = L.Pubsub(
            self.host, self.router, strict_signing=args.signing == "strict",
            msg_id_constructor=(
                (lambda m: hashlib.sha256(m.data).digest()) if args.msg_id == "sha256"
                else L.get_peer_and_seqno_msg_id),
        )
        install_reporters(self.pubsub, self.router, gossip=args.router == "gossipsub")
        listen = L.multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{args.port}")
        status = EXIT_OK
        async with self.host.run(listen_addrs=[listen]), AsyncExitStack() as stack:
            ac = getattr(self.host.get_network(), "auto_connector", None)
            if ac is not None:  # it would re-dial peers that went away
                await ac.stop()
            addrs = [a for a in self.host.get_transport_addrs() if "/ip4/" in str(a)]
            if not addrs:  # py logs the bind error and carries on
                raise RuntimeError(f"could not listen on {listen} (port in use?)")
            await stack.enter_async_context(L.background_trio_service(self.pubsub))
            if args.router == "gossipsub":
                await stack.enter_async_context(L.background_trio_service(self.router))
            await self.pubsub.wait_until_ready()
            self.nursery = await stack.enter_async_context(trio.open_nursery())
            if not args.no_subscribe:
                await self.subscribe(args.topic)
            emit(f"LISTEN {addrs[0]}/p2p/{self.host.get_id()}")

            targets = ([args.multiaddr] if args.cmd == "dial" else []) + args.connect
            for addr in targets:
                if not await self.dial(addr) and args.cmd == "dial":
                    status = EXIT_FAIL
                    self.finish(f"could not dial {addr}")
            if not self.done.is_set():
                self.nursery.start_soon(self.read_commands)
                self.nursery.start_soon(self.watch_signals)
                if args.lifetime > 0:
                    self.nursery.start_soon(self.watch_lifetime)
                if args.publish_count > 0:
                    self.nursery.start_soon(self.auto_publish)
                await self.done.wait()
            emit_json({"event": "exit", "reason": self.reason, "received": self.received,
                       "published": self.published})
            start_watchdog(10.0, status)
            self.nursery.cancel_scope.cancel()
        return status

    async def watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for s in signals:
                self.finish(signal.Signals(s).name)
                return

    async def watch_lifetime(self) -> None:
        await trio.sleep(self.args.lifetime)
        self.finish(f"lifetime of {self.args.lifetime:g} s reached")


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


def start_watchdog(seconds: float, code: int) -> None:
    """Hard exit if teardown hangs."""
    def fire() -> None:
        sys.stderr.write(f"pubsub_peer.py: watchdog: forcing exit after {seconds:g} s\n")
        sys.stderr.flush()
        os._exit(code)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pubsub_peer.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    listen = sub.add_parser("listen", help="listen on 127.0.0.1 and take part in pubsub")
    dial = sub.add_parser("dial", help="like listen, and dial a peer first")
    dial.add_argument("multiaddr", help="…/p2p/<peer id>")
    for sp in (listen, dial):
        sp.add_argument("--seed", type=parse_seed, required=True,
                        help="Ed25519 secret key = 32-byte little-endian N")
        sp.add_argument("--port", type=int, default=0)
        sp.add_argument("--connect", action="append", default=[], metavar="ADDR",
                        help="also dial this …/p2p/<id> address (repeatable)")
        sp.add_argument("--dial-timeout", type=float, default=15.0)
        sp.add_argument("--router", choices=("floodsub", "gossipsub"), default="gossipsub")
        sp.add_argument("--protocols", type=lambda s: [x for x in s.split(",") if x],
                        help="comma-separated protocol IDs instead of the router's defaults")
        sp.add_argument("--topic", default="interop")
        sp.add_argument("--no-subscribe", action="store_true",
                        help="do not subscribe to --topic (publish through fanout)")
        sp.add_argument("--signing", choices=("strict", "none"), default="strict")
        sp.add_argument("--heartbeat", type=float, default=1.0, help="gossipsub heartbeat (s)")
        sp.add_argument("--degree", type=int, default=6)
        sp.add_argument("--degree-low", type=int, default=4)
        sp.add_argument("--degree-high", type=int, default=12)
        sp.add_argument("--no-author", action="store_true",
                        help="publish without from and seqno (StrictNoSign; needs --signing none)")
        sp.add_argument("--msg-id", choices=("from-seqno", "sha256"), default="from-seqno")
        sp.add_argument("--spam-protection", action="store_true",
                        help="keep py's 10 messages/s per (forwarder, topic) limit")
        sp.add_argument("--publish-count", type=int, default=0)
        sp.add_argument("--publish-interval", type=float, default=0.5)
        sp.add_argument("--publish-text", default="py {seed} msg {i}")
        sp.add_argument("--publish-wait-peers", type=int, default=1)
        sp.add_argument("--publish-wait", type=float, default=30.0)
        sp.add_argument("--exit-after-publish", action="store_true")
        sp.add_argument("--linger", type=float, default=1.0)
        sp.add_argument("--lifetime", type=float, default=900.0, help="0 = no limit")
        sp.add_argument("--ignore-stdin", action="store_true", help="do not exit on stdin EOF")
        sp.add_argument("-v", "--verbose", action="count", default=0)
    return p


def setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name, quiet in (("pubsub-interop", logging.WARNING), ("libp2p", logging.ERROR)):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.addHandler(handler)
        logger.propagate = False
        if name == "libp2p":
            logger.setLevel(logging.DEBUG if verbosity >= 2 else quiet)
        else:
            logger.setLevel(quiet if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    logging.getLogger("libp2p.network.auto_connector").setLevel(
        logging.DEBUG if verbosity >= 2 else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.publish_count < 0 or args.publish_interval < 0 or args.heartbeat <= 0:
        build_parser().error("--publish-count/--publish-interval must be >= 0, --heartbeat > 0")
    if args.no_author and args.signing != "none":
        build_parser().error("--no-author needs --signing none")
    setup_logging(args.verbose)
    import_libp2p()
    setup_logging(args.verbose)  # libp2p's import-time logging setup resets it
    try:
        return trio.run(Node(args).run)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException as e:  # noqa: BLE001
        log.debug("failed", exc_info=True)
        emit_json({"event": "error", "error": describe(e)})
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
