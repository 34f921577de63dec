// The web phone page for the headless Chromium test: JsSIP (bundled by the
// test with esbuild into /jssip.js, global `JsSIP`) over wss:// with the
// browser's own WebRTC. The config is the JSON in the URL's fragment:
//   {"ws": "wss://127.0.0.1:PORT", "uri": "sip:dave@example.com", "password": "...",
//    "mode": "call", "target": "sip:bob@example.com", "dtmf": "9", "hangup": "self"}
// mode "call": it registers, calls `target` (audio from Chromium's fake
// device); mode "answer": it registers and answers the first call. Once the
// call is confirmed it sends `dtmf` by INFO (if given), hangs up ("hangup":
// "self") or waits for the BYE, and unregisters after the call. Each step
// is POSTed to /event as JSON (and logged to the console); the test reads
// them there.
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

  // What happens in a call, the same for both directions: DTMF by INFO
  // once confirmed (if cfg.dtmf), then hang up (cfg.hangup "self") or wait.
  function follow(session) {
    session.on("sdp", (e) => {
      const m = /m=audio \d+ (\S+)/.exec(e.sdp);
      report(e.originator === "local" ? "local_sdp" : "remote_sdp", {
        type: e.type,
        profile: m ? m[1] : null,
      });
    });
    session.on("confirmed", () => {
      report("confirmed", {
        signalingState: session.connection.signalingState,
        remoteSdp: !!session.connection.remoteDescription,
      });
      const hangup = () => {
        if (cfg.hangup === "self") {
          report("hangup");
          session.terminate();
        }
      };
      if (!cfg.dtmf) return hangup();
      session.once("newDTMF", (e) => {
        e.dtmf.on("succeeded", () => {
          report("dtmf_sent", { tone: cfg.dtmf });
          hangup();
        });
        e.dtmf.on("failed", () => fail("the DTMF INFO failed"));
      });
      session.sendDTMF(cfg.dtmf, { transportType: "INFO", duration: 100 });
    });
    session.on("newDTMF", (e) => {
      if (e.originator === "remote") report("dtmf_received", { tone: e.dtmf.tone });
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
  }

  const media = { mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } };
  ua.on("connected", () => report("connected"));
  ua.on("registrationFailed", (e) => fail("registration failed: " + e.cause));
  ua.once("registered", (e) => {
    report("registered", { contact: String(e.response.getHeader("Contact")) });
    if (cfg.mode === "call") follow(ua.call(cfg.target, media));
  });
  ua.on("newRTCSession", (e) => {
    if (e.originator !== "remote") return;
    report("incoming", { from: e.request.from.uri.toString(), offer: !!e.request.body });
    follow(e.session);
    // an INVITE without SDP: JsSIP offers only what rtcOfferConstraints asks
    // for (else no audio at all, and the offer never completes)
    e.session.answer(Object.assign({ rtcOfferConstraints: { offerToReceiveAudio: true } }, media));
  });
  ua.start();
})();
