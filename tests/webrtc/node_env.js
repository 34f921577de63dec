// What a browser gives a SIP-over-WebSocket library and Node 20 lacks, for
// netsip's peer tests: a WebSocket (the `ws` package), and a stand-in for
// RTCPeerConnection that "negotiates" a fixed audio-only SDP without media.
//
// Signalling is what these tests exercise: the offer is plain RTP/AVP PCMU on
// a discard port, the answer to an offer takes its first audio format, and
// nothing is ever sent or received. The real WebRTC SDP (ICE, DTLS, SAVPF) is
// tested with headless Chromium (tests/webrtc/browser.js).
"use strict";

const WebSocket = require("ws");

let sessionVersion = 1;

// An SDP for one audio stream (PCMU and telephone-event) on 127.0.0.1:9
// (the discard port): what a softphone without media would offer.
function fixedSdp(formats) {
  const fmts = formats || ["0", "101"];
  const lines = [
    "v=0",
    `o=- 4242 ${sessionVersion++} IN IP4 127.0.0.1`,
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    `m=audio 9 RTP/AVP ${fmts.join(" ")}`,
  ];
  if (fmts.includes("0")) lines.push("a=rtpmap:0 PCMU/8000");
  if (fmts.includes("101")) lines.push("a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15");
  lines.push("a=sendrecv");
  return lines.join("\r\n") + "\r\n";
}

// The formats of the first audio m-line of `sdp`, PCMU first if offered.
function audioFormats(sdp) {
  const m = /^m=audio \d+ \S+ ([^\r\n]*)/m.exec(sdp || "");
  if (!m) throw new Error("no audio m-line in the SDP");
  const offered = m[1].trim().split(/\s+/);
  const chosen = offered.includes("0") ? ["0"] : [offered[0]];
  return chosen;
}

class FakePeerConnection extends EventTarget {
  constructor() {
    super();
    this.localDescription = null;
    this.remoteDescription = null;
    this.signalingState = "stable";
    this.iceGatheringState = "complete"; // no candidates to wait for
    this.iceConnectionState = "new";
    this.connectionState = "new";
  }
  createOffer() {
    return Promise.resolve({ type: "offer", sdp: fixedSdp() });
  }
  createAnswer() {
    if (!this.remoteDescription) return Promise.reject(new Error("no remote offer"));
    return Promise.resolve({ type: "answer", sdp: fixedSdp(audioFormats(this.remoteDescription.sdp)) });
  }
  setLocalDescription(desc) {
    this.localDescription = { type: desc.type, sdp: desc.sdp };
    this.signalingState = desc.type === "offer" ? "have-local-offer" : "stable";
    return Promise.resolve();
  }
  setRemoteDescription(desc) {
    try {
      audioFormats(desc.sdp); // an SDP without audio is refused, as a browser would
    } catch (err) {
      return Promise.reject(err);
    }
    this.remoteDescription = { type: desc.type, sdp: desc.sdp };
    this.signalingState = desc.type === "offer" ? "have-remote-offer" : "stable";
    return Promise.resolve();
  }
  addTrack() {
    return {};
  }
  getSenders() {
    return [];
  }
  getReceivers() {
    return [];
  }
  close() {
    this.signalingState = "closed";
  }
}

class FakeSessionDescription {
  constructor(init) {
    this.type = init.type;
    this.sdp = init.sdp;
  }
}

function install() {
  global.window = global;
  global.WebSocket = WebSocket;
  global.RTCPeerConnection = FakePeerConnection;
  global.RTCSessionDescription = FakeSessionDescription;
}

const started = Date.now();

// One JSON object per line on stdout: what the Python test reads (`ms`:
// milliseconds since the start, for the failure messages).
function report(event, detail) {
  const line = Object.assign({ event, ms: Date.now() - started }, detail || {});
  process.stdout.write(JSON.stringify(line) + "\n");
}

// Exit with `code` once stdout is flushed.
function finish(code) {
  process.stdout.write("", () => process.exit(code));
}

// The config is one JSON argument; a whole run is bounded by its "timeout" (s).
function config() {
  const cfg = JSON.parse(process.argv[2] || "{}");
  const seconds = cfg.timeout || 20;
  setTimeout(() => {
    report("timeout", { seconds });
    finish(3);
  }, seconds * 1000).unref();
  return cfg;
}

module.exports = { install, fixedSdp, audioFormats, report, finish, config };
