#!/usr/bin/python3
"""An aiortc peer for p2pd's interop tests (ctl/tests/interop.rs).

It speaks signald's protocol 1 (docs/protocol.md) as any third-party
client would: no token, ICE servers only from the welcome, trickled
candidates in, whole-SDP candidates out (aiortc gathers before it answers).

On the data channel it sends `hello 0` .. `hello N-1` as soon as the
channel opens, then echoes every message it receives as `echo:<message>`,
except `close your connection`, on which it closes its peer connection
without a word to signald, and `drop your signaling`, on which it closes
its WebSocket to signald and keeps the peer connection.
It prints one line per event on stdout for the test to wait for:
`welcome <id>`, `paired <peer> <initiator>`, `offer`, `answer`, `open`,
`restart-offer ufrag-changed=<bool>`, `peer_disconnected <reason>`,
`kept <peer>`, `closed`, `signaling dropped`.

Like p2pd (docs/control.md, "Network changes") it keeps an open
connection when signald ends the pairing, for `--keep` seconds: a peer
whose network changed comes back, pairs again and sends an ICE restart
offer over the same connection. aiortc 1.4 answers such an offer with its
old ICE credentials (it cannot restart ICE), which the test relies on.

Run with Debian's python3 (python3-aiortc 1.4, python3-websockets), or
with the virtual environment scripts/test makes from requirements.txt
(aiortc as PyPI has it today).
"""

import argparse
import asyncio
import json
import logging
import os
import re

import websockets
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp


def say(*words):
    print(*words, flush=True)


def ufrag(sdp):
    m = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M)
    return m.group(1) if m else None


class Peer:
    def __init__(self, ws, ice_servers, hellos, keep):
        self.ws = ws
        self.ice_servers = ice_servers
        self.hellos = hellos
        self.keep = keep
        self.pc = None
        self.peer = None
        self.open = False
        self.remote_ufrag = None
        self.expiry = None

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    def new_pc(self):
        servers = [
            RTCIceServer(
                urls=s["urls"],
                username=s.get("username"),
                credential=s.get("credential"),
            )
            for s in self.ice_servers
        ]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.pc.on("datachannel", self.use_channel)

    def use_channel(self, channel):
        def opened():
            self.open = True
            say("open", channel.label)
            for i in range(self.hellos):
                channel.send(f"hello {i}")

        if channel.readyState == "open":
            opened()
        else:
            channel.on("open", opened)

        @channel.on("message")
        def on_message(message):
            if message == "drop your signaling":
                # As when its WebSocket dies with a network change: the
                # peer connection lives on.
                say("signaling dropped")
                asyncio.ensure_future(self.ws.close())
            elif message == "close your connection":
                # Closes the peer connection (SCTP ABORT, DTLS close alert)
                # and tells signald nothing: p2pd must see it on the path.
                asyncio.ensure_future(self.close())
            elif isinstance(message, bytes):
                channel.send(b"echo:" + message)
            else:
                channel.send("echo:" + message)

    async def paired(self, peer, initiator):
        say("paired", peer, str(initiator).lower())
        if self.pc is not None and self.peer == peer and self.open:
            # Paired again after a network change: same connection.
            self.expiry.cancel()
            say("kept", peer)
            return
        await self.close()
        self.peer = peer
        self.new_pc()
        if initiator:
            self.use_channel(self.pc.createDataChannel("p2p"))
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self.send({"type": "offer", "sdp": self.pc.localDescription.sdp})

    async def offer(self, sdp):
        theirs = ufrag(sdp)
        if self.remote_ufrag is None:
            say("offer")
        else:
            say("restart-offer", f"ufrag-changed={str(theirs != self.remote_ufrag).lower()}")
        self.remote_ufrag = theirs
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})

    async def answer(self, sdp):
        say("answer")
        self.remote_ufrag = ufrag(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def candidate(self, c):
        if c is None or self.pc is None:
            return  # end-of-candidates: nothing waits for it
        line = c["candidate"]
        if line.startswith("candidate:"):
            line = line[len("candidate:"):]
        cand = candidate_from_sdp(line)
        cand.sdpMid = c.get("sdpMid")
        cand.sdpMLineIndex = c.get("sdpMLineIndex")
        await self.pc.addIceCandidate(cand)

    async def gone(self, reason):
        say("peer_disconnected", reason)
        if self.open and reason != "unpaired":
            # Maybe a network change: keep the connection a while.
            self.expiry = asyncio.get_running_loop().call_later(
                self.keep, lambda: asyncio.ensure_future(self.close())
            )
        else:
            await self.close()

    async def close(self):
        if self.pc is not None:
            await self.pc.close()
            say("closed")
        self.pc = None
        self.open = False
        self.remote_ufrag = None


async def main():
    # Its own log goes to stderr; AIORTC_DEBUG=1 shows every packet.
    logging.basicConfig(level=logging.DEBUG if os.environ.get("AIORTC_DEBUG") else logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="signald's ws:// URL")
    p.add_argument("--id", required=True)
    p.add_argument("--pair", help="pair with this ID (and offer)")
    p.add_argument("--hellos", type=int, default=0)
    p.add_argument("--keep", type=float, default=15.0)
    args = p.parse_args()

    async with websockets.connect(f"{args.url}?id={args.id}") as ws:
        welcome = json.loads(await ws.recv())
        say("welcome", welcome["id"])
        peer = Peer(ws, welcome["ice_servers"], args.hellos, args.keep)
        if args.pair:
            await peer.send({"type": "pair", "peer_id": args.pair})
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg["type"]
            if kind == "ping":
                await peer.send({"type": "pong"})
            elif kind == "paired":
                await peer.paired(msg["peer_id"], msg["initiator"])
            elif kind == "offer":
                await peer.offer(msg["sdp"])
            elif kind == "answer":
                await peer.answer(msg["sdp"])
            elif kind == "candidate":
                await peer.candidate(msg["candidate"])
            elif kind == "peer_disconnected":
                await peer.gone(msg["reason"])
            elif kind == "error":
                say("error", msg["code"], msg["message"])
            elif kind == "ice_servers":
                # Renewed TURN credentials (an extension): for the next
                # connection.
                peer.ice_servers = msg["ice_servers"]
    # The WebSocket is gone (`drop your signaling`): the peer connection
    # lives on while it is open.
    while peer.pc is not None:
        await asyncio.sleep(0.2)


asyncio.run(main())
