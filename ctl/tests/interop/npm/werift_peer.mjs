// A werift peer for p2pd's interop tests (ctl/tests/current_stacks.rs),
// the same behaviour as ../aiortc_peer.py: it speaks signald's protocol 1
// (docs/protocol.md) as a third-party client (no token, ICE servers only
// from the welcome, candidates trickled both ways), sends `hello 0` ..
// `hello N-1` when the channel opens, echoes every message as
// `echo:<message>`, on `close your connection` closes its peer
// connection without a word to signald, and on `drop your signaling`
// closes its WebSocket and keeps the peer connection.
// One line per event on stdout: `welcome <id>`, `paired <peer> <initiator>`,
// `open <label>`, `peer_disconnected <reason>`, `closed`,
// `signaling dropped`.
//
// Run with the node that package.json pins (werift needs node 22):
//   node_modules/.bin/node werift_peer.mjs --url ws://... --id wr [--pair ID] [--hellos N]

import { RTCPeerConnection } from "werift";
import WebSocket from "ws";

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const hellos = Number(args.hellos ?? 0);
const say = (...words) => process.stdout.write(words.join(" ") + "\n");

const ws = new WebSocket(`${args.url}?id=${args.id}`);
const send = (frame) => ws.send(JSON.stringify(frame));
let iceServers = [];
let pc = null;
let early = [];
let dropped = false;

function useChannel(channel) {
  const opened = () => {
    say("open", channel.label);
    for (let i = 0; i < hellos; i++) channel.send(`hello ${i}`);
  };
  if (channel.readyState === "open") opened();
  else channel.stateChanged.subscribe((s) => s === "open" && opened());
  channel.onMessage.subscribe((m) => {
    const text = typeof m === "string" ? m : null;
    if (text === "drop your signaling") {
      // As when its WebSocket dies with a network change: the peer
      // connection lives on.
      dropped = true;
      say("signaling dropped");
      ws.close();
    } else if (text === "close your connection") {
      close();
    } else if (text !== null) {
      channel.send("echo:" + text);
    } else {
      channel.send(Buffer.concat([Buffer.from("echo:"), m]));
    }
  });
}

function newPc() {
  pc = new RTCPeerConnection({ iceServers });
  pc.onDataChannel.subscribe(useChannel);
  pc.onIceCandidate.subscribe((c) => {
    send({ type: "candidate", candidate: c ? c.toJSON() : null });
  });
}

async function close() {
  if (pc) {
    const old = pc;
    pc = null;
    await old.close();
    say("closed");
  }
}

async function addCandidate(c) {
  if (!pc || c === null) return; // end-of-candidates: nothing waits for it
  if (!pc.remoteDescription) {
    early.push(c);
    return;
  }
  await pc.addIceCandidate(c);
}

async function described() {
  for (const c of early.splice(0)) await pc.addIceCandidate(c);
}

// Frames are handled one after the other, each to its end: closing the
// old connection on `paired` takes a moment, and the offer that follows
// must not find it half gone.
let queue = Promise.resolve();
ws.on("message", (raw) => {
  queue = queue
    .then(() => handle(JSON.parse(raw.toString())))
    .catch((e) => say("failed", String(e).replace(/\s+/g, " ")));
});

async function handle(msg) {
  switch (msg.type) {
    case "welcome":
      iceServers = msg.ice_servers;
      say("welcome", msg.id);
      if (args.pair) send({ type: "pair", peer_id: args.pair });
      break;
    case "ping":
      send({ type: "pong" });
      break;
    case "paired":
      say("paired", msg.peer_id, String(msg.initiator));
      await close();
      early = [];
      newPc();
      if (msg.initiator) {
        useChannel(pc.createDataChannel("p2p"));
        await pc.setLocalDescription(await pc.createOffer());
        send({ type: "offer", sdp: pc.localDescription.sdp });
      }
      break;
    case "offer":
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      await described();
      await pc.setLocalDescription(await pc.createAnswer());
      send({ type: "answer", sdp: pc.localDescription.sdp });
      break;
    case "answer":
      await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      await described();
      break;
    case "candidate":
      await addCandidate(msg.candidate);
      break;
    case "peer_disconnected":
      say("peer_disconnected", msg.reason);
      await close();
      break;
    case "error":
      say("error", msg.code, msg.message);
      break;
  }
}
ws.on("close", () => {
  if (!dropped) process.exit(0);
});
