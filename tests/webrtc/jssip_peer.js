// JsSIP (npm `jssip`) in Node as a web phone for netsip's tests.
//
//   node jssip_peer.js '{"ws": "wss://127.0.0.1:PORT", "uri": "sip:alice@example.com",
//                        "password": "...", "mode": "call", "target": "sip:bob@example.com",
//                        "dtmf": "5", "hangup": "self", "timeout": 20}'
//
// mode "call": register, call `target`, send `dtmf` by INFO once confirmed,
// then hang up ("hangup": "self") or wait for the peer's BYE ("peer").
// mode "answer": register, answer the first call, send `dtmf` if given, and
// hang up or wait for the BYE the same way.
// Either way it unregisters after the call and exits 0; each step is one
// JSON line on stdout (node_env.report); exit 1 on a failure, 3 on timeout.
"use strict";

const env = require("./node_env");
env.install();
const JsSIP = require("jssip");

const cfg = env.config();
const report = env.report;
const noMedia = { audio: false, video: false };

const socket = new JsSIP.WebSocketInterface(cfg.ws);
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: cfg.uri,
  password: cfg.password,
  register: true,
  session_timers: false,
  connection_recovery_min_interval: 1,
  connection_recovery_max_interval: 2,
});

function fail(why) {
  report("failed", { why: String(why) });
  try {
    ua.stop();
  } catch (err) {
    // stopping is best effort here
  }
  env.finish(1);
}

function done() {
  ua.once("unregistered", () => {
    report("unregistered");
    // (stop() closes the WebSocket 2 s later while a transaction is left: the
    // INVITE client transaction waits for 2xx retransmissions, RFC 6026 Timer M)
    ua.once("disconnected", () => {
      report("disconnected");
      env.finish(0);
    });
    ua.stop();
  });
  ua.unregister();
}

// What happens in a call, the same for both directions.
function follow(session) {
  session.on("progress", (e) => report("progress", { code: e.response ? e.response.status_code : null }));
  session.on("accepted", () => report("accepted"));
  session.on("confirmed", () => {
    report("confirmed", { remote: session.remote_identity.uri.toString() });
    const hangup = () => {
      if (cfg.hangup === "self") {
        report("hangup");
        session.terminate();
      }
    };
    if (cfg.dtmf) {
      session.once("newDTMF", (e) => {
        e.dtmf.on("succeeded", () => {
          report("dtmf_sent", { tone: cfg.dtmf });
          hangup();
        });
        e.dtmf.on("failed", () => fail("the DTMF INFO failed"));
      });
      session.sendDTMF(cfg.dtmf, { transportType: "INFO", duration: 100 });
    } else {
      hangup();
    }
  });
  session.on("newDTMF", (e) => {
    if (e.originator === "remote") report("dtmf_received", { tone: e.dtmf.tone });
  });
  session.on("failed", (e) => fail(`call failed: ${e.cause}`));
  session.on("ended", (e) => {
    report("ended", { originator: e.originator, cause: e.cause });
    done();
  });
}

ua.on("connected", () => report("connected"));
ua.on("registrationFailed", (e) => fail(`registration failed: ${e.cause}`));
ua.once("registered", (e) => {
  report("registered", { contact: String(e.response.getHeader("Contact")) });
  if (cfg.mode === "call") {
    const session = ua.call(cfg.target, { mediaConstraints: noMedia, pcConfig: {} });
    follow(session);
  }
});
ua.on("newRTCSession", (e) => {
  if (e.originator !== "remote") return;
  report("incoming", { from: e.request.from.uri.toString() });
  follow(e.session);
  e.session.answer({ mediaConstraints: noMedia, pcConfig: {} });
});
ua.start();
