// Two JsSIP phones in one page of headless Chromium, both over wss:// to
// netsip proxy: the caller calls the callee (registered with an .invalid
// Contact, so the proxy reaches it over its WebSocket: a flow), both with
// real WebRTC media. The config is the JSON in the URL's fragment:
//   {"ws": "wss://127.0.0.1:PORT", "caller": {"uri": ..., "password": ...},
//    "callee": {"uri": ..., "password": ...}, "dtmf": "4"}
// Once the call is confirmed it waits for ICE to connect and for RTP to
// arrive at the callee (getStats), sends `dtmf` by INFO, hangs up, and
// unregisters both. Each step is POSTed to /event (as page.js does).
"use strict";

(function () {
  const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));

  function report(event, detail) {
    const body = JSON.stringify(Object.assign({ event }, detail || {}));
    console.log("netsip-peer " + body);
    document.title = event;
    return fetch("/event", { method: "POST", body, keepalive: true }).catch(() => {});
  }

  window.addEventListener("error", (e) => report("failed", { why: "page error: " + e.message }));
  report("loaded");

  function phone(who) {
    return new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(cfg.ws)],
      uri: cfg[who].uri,
      password: cfg[who].password,
      register: true,
      session_timers: false,
    });
  }

  const callee = phone("callee");
  const caller = phone("caller");
  let unregistered = 0;

  function fail(why) {
    report("failed", { why: String(why) });
    caller.stop();
    callee.stop();
  }

  function byeBye() {
    for (const ua of [caller, callee]) {
      ua.once("unregistered", () => {
        unregistered += 1;
        if (unregistered === 2) report("unregistered");
        ua.stop();
      });
      ua.unregister();
    }
  }

  // Resolves once `pc` has ICE connected, rejects after `ms`.
  function iceConnected(pc, ms) {
    return new Promise((resolve, reject) => {
      const ok = () => ["connected", "completed"].includes(pc.iceConnectionState);
      if (ok()) return resolve(pc.iceConnectionState);
      const timer = setTimeout(() => reject(new Error("ICE: " + pc.iceConnectionState)), ms);
      pc.addEventListener("iceconnectionstatechange", () => {
        if (ok()) {
          clearTimeout(timer);
          resolve(pc.iceConnectionState);
        }
      });
    });
  }

  // The RTP packets received on `pc`'s audio, once there are some (or after `ms`).
  async function rtpReceived(pc, ms) {
    const until = Date.now() + ms;
    for (;;) {
      let packets = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") packets += s.packetsReceived || 0;
      });
      if (packets > 0 || Date.now() > until) return packets;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  let incoming = null;
  callee.on("newRTCSession", (e) => {
    if (e.originator !== "remote") return;
    incoming = e.session;
    report("incoming", { from: e.request.from.uri.toString() });
    incoming.on("newDTMF", (d) => {
      if (d.originator === "remote") report("dtmf_received", { tone: d.dtmf.tone });
    });
    incoming.on("ended", (d) => report("callee_ended", { originator: d.originator }));
    incoming.on("failed", (d) => fail("callee: " + d.cause));
    incoming.answer({ mediaConstraints: { audio: true, video: false } });
  });

  callee.on("registrationFailed", (e) => fail("callee registration: " + e.cause));
  caller.on("registrationFailed", (e) => fail("caller registration: " + e.cause));
  callee.once("registered", (e) => {
    report("callee_registered", { contact: String(e.response.getHeader("Contact")) });
    caller.start();
  });
  caller.once("registered", () => {
    report("caller_registered");
    const session = caller.call(cfg.callee.uri, {
      mediaConstraints: { audio: true, video: false },
      pcConfig: { iceServers: [] },
    });
    session.on("failed", (e) => fail("caller: " + e.cause));
    session.on("ended", (e) => {
      report("caller_ended", { originator: e.originator });
      byeBye();
    });
    session.on("confirmed", async () => {
      report("confirmed");
      try {
        const states = await Promise.all([
          iceConnected(session.connection, 15000),
          iceConnected(incoming.connection, 15000),
        ]);
        const packets = await rtpReceived(incoming.connection, 10000);
        report("media", { ice: states, packets });
      } catch (err) {
        fail(err);
        return;
      }
      session.once("newDTMF", (e) => {
        e.dtmf.on("succeeded", () => {
          report("dtmf_sent", { tone: cfg.dtmf });
          session.terminate();
        });
        e.dtmf.on("failed", () => fail("the DTMF INFO failed"));
      });
      session.sendDTMF(cfg.dtmf, { transportType: "INFO", duration: 100 });
    });
  });
  callee.start();
})();
