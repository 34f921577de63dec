// SIP.js (npm `sip.js`) in Node as a web phone for netsip's tests.
//
//   node sipjs_peer.mjs '{"ws": "ws://127.0.0.1:PORT", "uri": "sip:carol@example.com",
//                         "password": "...", "mode": "call", "target": "sip:bob@example.com",
//                         "dtmf": "7", "hangup": "self", "timeout": 20}'
//
// The same modes and JSON lines as jssip_peer.js. SIP.js takes a custom
// session description handler: here one that offers and answers a fixed
// RTP/AVP PCMU SDP (node_env.fixedSdp) and has no media.
import env from "./node_env.js";
import { Inviter, Registerer, RegistererState, SessionState, UserAgent } from "sip.js";

env.install(); // the WebSocket SIP.js's transport uses
const cfg = env.config();
const report = env.report;

// SessionDescriptionHandler (sip.js api/session-description-handler.d.ts) without media.
class FixedSdh {
  constructor() {
    this.remote = null;
  }
  close() {}
  getDescription() {
    const formats = this.remote ? env.audioFormats(this.remote) : undefined;
    return Promise.resolve({ body: env.fixedSdp(formats), contentType: "application/sdp" });
  }
  hasDescription(contentType) {
    return contentType === "application/sdp";
  }
  setDescription(sdp) {
    try {
      env.audioFormats(sdp);
    } catch (err) {
      return Promise.reject(err);
    }
    this.remote = sdp;
    return Promise.resolve();
  }
  sendDtmf() {
    return false; // DTMF goes by INFO (Session.info), not in media
  }
}

const user = cfg.uri.replace(/^sips?:/, "").split("@")[0];
let registerer = null;
let finished = false;

function fail(why) {
  if (finished) return;
  finished = true;
  report("failed", { why: String(why) });
  ua.stop().finally(() => env.finish(1));
}

function done() {
  if (finished) return;
  finished = true;
  registerer
    .unregister()
    .catch((err) => report("unregister_error", { why: String(err) }));
}

function sendDtmfThenHangup(session) {
  const hangup = () => {
    if (cfg.hangup === "self") {
      report("hangup");
      session.bye().catch((err) => fail(`BYE: ${err}`));
    }
  };
  if (!cfg.dtmf) {
    hangup();
    return;
  }
  session
    .info({
      requestOptions: {
        body: {
          contentDisposition: "render",
          contentType: "application/dtmf-relay",
          content: `Signal=${cfg.dtmf}\r\nDuration=100\r\n`,
        },
      },
      requestDelegate: {
        onAccept: () => {
          report("dtmf_sent", { tone: cfg.dtmf });
          hangup();
        },
        onReject: (res) => fail(`the DTMF INFO got ${res.message.statusCode}`),
      },
    })
    .catch((err) => fail(`INFO: ${err}`));
}

// What happens in a call, the same for both directions.
function follow(session) {
  session.delegate = {
    onInfo(info) {
      const m = /Signal=\s*(\S)/.exec(info.request.body || "");
      report("dtmf_received", { tone: m ? m[1] : null });
      info.accept();
    },
  };
  session.stateChange.addListener((state) => {
    if (state === SessionState.Established) {
      report("confirmed", { remote: session.remoteIdentity.uri.toString() });
      sendDtmfThenHangup(session);
    } else if (state === SessionState.Terminated) {
      report("ended", { established: session.dialog !== undefined });
      done();
    }
  });
}

const ua = new UserAgent({
  uri: UserAgent.makeURI(cfg.uri),
  authorizationUsername: user,
  authorizationPassword: cfg.password,
  transportOptions: { server: cfg.ws, traceSip: false },
  sessionDescriptionHandlerFactory: () => new FixedSdh(),
  logBuiltinEnabled: false,
  delegate: {
    onConnect() {
      report("connected");
    },
    onInvite(invitation) {
      report("incoming", { from: invitation.remoteIdentity.uri.toString() });
      follow(invitation);
      invitation.accept().catch((err) => fail(`accept: ${err}`));
    },
  },
});

registerer = new Registerer(ua, { expires: 300 });
let registered = false;
registerer.stateChange.addListener((state) => {
  if (state === RegistererState.Registered && !registered) {
    registered = true;
    report("registered", { contact: ua.contact.toString() });
    if (cfg.mode === "call") {
      const inviter = new Inviter(ua, UserAgent.makeURI(cfg.target));
      follow(inviter);
      inviter.invite().catch((err) => fail(`invite: ${err}`));
    }
  } else if (state === RegistererState.Unregistered && registered) {
    report("unregistered");
    ua.stop().then(() => env.finish(0));
  }
});

ua.start()
  .then(() =>
    registerer.register({
      requestDelegate: {
        onReject: (res) => fail(`registration failed: ${res.message.statusCode}`),
      },
    }),
  )
  .catch((err) => fail(`start: ${err}`));
