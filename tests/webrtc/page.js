// The web phone page for the headless Chromium test: JsSIP (bundled by the
// test with esbuild into /jssip.js, global `JsSIP`) over wss:// with the
// browser's own WebRTC. The config is the JSON in the URL's fragment:
//   {"ws": "wss://127.0.0.1:PORT", "uri": "sip:dave@example.com", "password": "...",
//    "target": "sip:bob@example.com", "dtmf": "9"}
// It registers, calls `target` (audio from Chromium's fake device), sends
// `dtmf` by INFO once confirmed, hangs up, unregisters. Each step is POSTed
// to /event as JSON (and logged to the console); the test reads them there.
"use strict";

(function () {
  const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  let ended = false;

  function report(event, detail) {
    const body = JSON.stringify(Object.assign({ event }, detail || {}));
    console.log("netsip-peer " + body);
    document.title = event;
    return fetch("/event", { method: "POST", body, keepalive: true }).catch(() => {});
  }

  window.addEventListener("error", (e) => report("failed", { why: "page error: " + e.message }));

  report("loaded", { userAgent: navigator.userAgent });
  if (typeof JsSIP === "undefined" || typeof RTCPeerConnection === "undefined") {
    report("failed", { why: "no JsSIP bundle or no WebRTC in this browser" });
    return;
  }

  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(cfg.ws)],
    uri: cfg.uri,
    password: cfg.password,
    register: true,
    session_timers: false,
  });

  function fail(why) {
    report("failed", { why: String(why) });
    ua.stop();
  }

  ua.on("connected", () => report("connected"));
  ua.on("registrationFailed", (e) => fail("registration failed: " + e.cause));
  ua.once("registered", (e) => {
    report("registered", { contact: String(e.response.getHeader("Contact")) });
    const session = ua.call(cfg.target, {
      mediaConstraints: { audio: true, video: false },
      pcConfig: { iceServers: [] },
    });
    session.on("sdp", (e) => {
      if (e.originator === "local") report("offer", { profile: /m=audio \d+ (\S+)/.exec(e.sdp)[1] });
    });
    session.on("progress", () => report("progress"));
    session.on("confirmed", () => {
      report("confirmed", {
        signalingState: session.connection.signalingState,
        remoteSdp: !!session.connection.remoteDescription,
      });
      session.once("newDTMF", (e) => {
        e.dtmf.on("succeeded", () => {
          report("dtmf_sent", { tone: cfg.dtmf });
          report("hangup");
          session.terminate();
        });
        e.dtmf.on("failed", () => fail("the DTMF INFO failed"));
      });
      session.sendDTMF(cfg.dtmf, { transportType: "INFO", duration: 100 });
    });
    session.on("failed", (e) => fail("call failed: " + e.cause));
    session.on("ended", (e) => {
      if (ended) return;
      ended = true;
      report("ended", { originator: e.originator, cause: e.cause });
      ua.once("unregistered", () => {
        report("unregistered");
        ua.stop();
      });
      ua.unregister();
    });
  });
  ua.start();
})();
