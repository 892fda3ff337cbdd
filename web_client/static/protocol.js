// teleconsult signaling protocol for browsers: no DOM here, so any page or tool can build on it.
// The contract is docs/protocol.md.

import { ChannelState } from "./channel.js";
import { SEND_POLICY, dead, gathered, geometry, keep, layers } from "./peer.js";

// What third parties built on this module took from it before it was split.
export { SEND_POLICY, gathered, layers };

export const PROTOCOL_VERSION = 1;

// How many of its own acknowledged operations a client keeps, to send again if a node lost them.
const RECENT_OPS = 200;
// Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes").
const FINAL_CLOSES = new Set([4000, 4001, 4005, 4009, 4010, 4011, 4012, 4013]);
// The client probes the connection every PROBE_MS and gives it up when a probe is not answered
// within SILENCE_MS, or four round trips on a slow path: a handover or a dead cell is noticed
// in under a second, where TCP's retransmission backoff on the dead socket can take tens of
// seconds (docs/protocol.md, "Keepalive"). A probe is judged from when it was sent, so a
// background tab whose timers the browser slows does not give up a live connection.
const PROBE_MS = 250;
const SILENCE_MS = 750;
const TICK_MS = 50;
// A connection attempt into a network that is away hangs on TCP's backoff: give it up and dial
// again, so that an attempt starts soon after the network is back.
const DIAL_MS = 1500;
const WELCOME_MS = 5000;
// While the server keeps this participant (its reconnect grace, 60 s by default) it is dialled
// every RETRY_MS; after that with a backoff up to RETRY_MAX_MS, never giving up.
const RETRY_MS = 250;
const RETRY_MAX_MS = 5000;
const GRACE_MS = 60000;
// The code this client closes a connection it gave up with: not 1000/1001, which mean leaving.
const GIVEN_UP = 3001;


/**
 * @typedef {{type: string, [key: string]: any}} Message
 * @typedef {{id: string, identity: string, name: string, role: string, muted: boolean,
 *            joined_at: number, may_annotate?: boolean, floor?: boolean, connected?: boolean}} ParticipantInfo
 * @typedef {{track: MediaStreamTrack, source: string, label?: string, pixelSpacingMm?: number | null}} Feed
 *   pixelSpacingMm: millimetres per pixel of a video picture at its full size, for rulers
 * @typedef {{videoCodec?: string, h264Profile?: string, simulcast?: boolean}} PublishOptions
 * @typedef {{id: string, pc: RTCPeerConnection, feeds: Map<MediaStreamTrack, string>}} Publication
 * @typedef {{id: string, of: string, pc: RTCPeerConnection, tracks: Map<string, MediaStreamTrack>}} Subscription
 */

/**
 * A participant's signaling session; emits "message", "state" and "closed" events, and, when it
 * had to make media again after a network change, "published" and "subscribed".
 */
export class Session extends EventTarget {
  /**
   * @param {{url: string, room: string, token: string, retries?: number, relayOnly?: boolean}} options
   *   retries: attempts to make the first connection; once joined, it reconnects for as long as
   *   it takes. relayOnly: send media only through the TURN servers the server hands out
   */
  constructor({ url, room, token, retries = 10, relayOnly = false }) {
    super();
    this.url = url;
    this.room = room;
    this.token = token;
    this.retries = retries;
    this.relayOnly = relayOnly;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {Message | null} */
    this.welcome = null;
    /** @type {Map<string, ParticipantInfo>} */
    this.participants = new Map();
    /** @type {Message | null} the frame held up for everyone now (its frame_held event) */
    this.held = null;
    /** @type {Map<string, Set<string>>} who speaks now, as the server hears it: participant → microphone feeds */
    this.speaking = new Map();
    this.state = "idle";
    this.attempt = 0;
    this.leaving = false;
    /** When the connection was lost (0 while connected). */
    this.lostAt = 0;
    /** When anything last arrived, and when the unanswered probe was sent (0: none). */
    this.heardAt = 0;
    this.probeAt = 0;
    /** The smoothed round trip of probes, in ms. */
    this.rtt = 0;
    /** @type {ReturnType<typeof setTimeout> | null} the next dial */
    this.retryTimer = null;
    /** @type {ReturnType<typeof setInterval> | null} */
    this.ticker = null;
    /** @type {{resolve: (m: Message) => void, reject: (e: any) => void} | null} the first join */
    this.joining = null;
    /** @type {Map<string, {resolve: (m: Message) => void, reject: (e: Message) => void}>} */
    this.pending = new Map();
    this.nextRef = 0;
    /** The last channel sequence number seen, sent as `resume` when reconnecting. */
    this.seq = 0;
    /** @type {Map<string, RTCPeerConnection>} stream or subscription id → its connection */
    this.connections = new Map();
    /**
     * What this participant publishes, by stream id: kept across reconnects, and published again
     * under the same id when its media path is lost.
     * @type {Map<string, {feeds: Feed[], options: PublishOptions, pc: RTCPeerConnection, healing: boolean}>}
     */
    this.published = new Map();
    /**
     * What this participant receives, by the id of the stream received: made again when its
     * media path is lost or the server ended it.
     * @type {Map<string, {sub: Subscription, feeds: string[] | undefined, healing: boolean}>}
     */
    this.received = new Map();
    /** The room's annotations, pointers, chat and hands. */
    this.channel = new ChannelState();
    /**
     * Ordered operations not yet acknowledged, by op id: kept across a reconnect and sent again
     * after the welcome (ids make that safe), so a drawing made as the network or the server's
     * node drops is not lost.
     * @type {Map<string, {resolve: (m: Message) => void, reject: (e: Message) => void, msg: Message}>}
     */
    this.pendingOps = new Map();
    /**
     * This participant's recent acknowledged operations, by op id, with their place in the
     * order: if the room comes back without them (its node died before they reached the
     * store), they are sent again.
     * @type {Map<string, {msg: Message, seq: number}>}
     */
    this.recentOps = new Map();
  }

  /** This participant's id, once joined. */
  get me() {
    return this.welcome ? String(this.welcome.participant_id) : "";
  }

  /** This participant's current role. */
  get role() {
    const p = this.participants.get(this.me);
    return p ? p.role : this.welcome ? this.welcome.you.role : "";
  }

  /** Connect and say hello; resolves with the welcome, rejects with the server's error. */
  connect() {
    this.leaving = false;
    return new Promise((resolve, reject) => {
      this.joining = { resolve, reject };
      if (!this.ticker) this.ticker = setInterval(() => this._tick(), TICK_MS);
      if (typeof window !== "undefined") window.addEventListener("online", this._online);
      this._dial();
    });
  }

  /** The OS says the network is back: dial now rather than at the next retry. */
  _online = () => {
    if (this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this._dial();
  };

  _dial() {
    this.retryTimer = null;
    this._setState(this.welcome || this.attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.heardAt = Date.now();
    this.probeAt = 0;
    /** @type {{refusal: Message | null}} */
    const told = { refusal: null };
    const timer = setTimeout(() => {
      if (ws.readyState === WebSocket.CONNECTING) this._lost(ws, 0, told.refusal);
    }, DIAL_MS);
    ws.onopen = () => {
      clearTimeout(timer);
      this.heardAt = Date.now();
      /** @type {Message} */
      const hello = { type: "hello", version: PROTOCOL_VERSION, room: this.room, token: this.token };
      if (this.welcome) hello.resume = this.seq; // a reconnect: ask for exactly what was missed
      this._send(hello);
    };
    ws.onmessage = (frame) => {
      this.heardAt = Date.now();
      this._receive(JSON.parse(frame.data), told);
    };
    ws.onclose = (ev) => {
      clearTimeout(timer);
      this._lost(ws, ev.code, told.refusal);
    };
  }

  /** Probe the connection, and give it up when the probe or the server's pings go unanswered. */
  _tick() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (!this._live()) {
      // Open, hello sent, no welcome yet (the server takes no ping before it): a path that
      // died on the way is given up, later than an attempt that never opened (a busy server
      // may take a moment to restore the room).
      if (now - this.heardAt > WELCOME_MS) this._lost(ws, 0, null);
      return;
    }
    const interval = Number(this.welcome?.ping_interval || 15) * 1000;
    const unanswered = this.probeAt > 0 && this.heardAt < this.probeAt;
    const patience = Math.max(SILENCE_MS, 4 * this.rtt);
    if ((unanswered && now - this.probeAt > patience) || now - this.heardAt > 1.5 * interval + 500) {
      this._lost(ws, 0, null);
      return;
    }
    if (!unanswered && now - this.probeAt >= PROBE_MS) {
      this.probeAt = now;
      this._send({ type: "ping", ts: now / 1000 });
    }
  }

  /**
   * A connection ended (closed, or given up as dead): reconnect unless it was final. Media that
   * still flows is kept; the welcome of the next connection says what must be made again.
   * @param {WebSocket} ws @param {number} code @param {Message | null} refusal
   */
  _lost(ws, code, refusal) {
    if (ws !== this.ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(GIVEN_UP);
    const lost = { type: "error", code: "connection_lost", message: "connection lost" };
    for (const waiter of this.pending.values()) waiter.reject(lost);
    this.pending.clear();
    const final = FINAL_CLOSES.has(code) || this.leaving;
    if (final || (!this.welcome && this.attempt >= this.retries)) {
      this._end(code, refusal);
      return;
    }
    const now = Date.now();
    if (!this.lostAt) this.lostAt = now;
    this.attempt += 1;
    this._setState("reconnecting");
    // The first attempt goes at once: a connection given up for silence is usually a path that
    // changed, and a new one works straight away.
    const quick = this.welcome && now - this.lostAt < GRACE_MS;
    const delay = quick ? (this.attempt === 1 ? 0 : RETRY_MS) : Math.min(RETRY_MAX_MS, 500 * 2 ** Math.min(this.attempt - 1, 4));
    this.retryTimer = setTimeout(() => this._dial(), delay);
  }

  /** The session is over: what it published and received ends with it. @param {number} code @param {Message | null} refusal */
  _end(code, refusal) {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    if (typeof window !== "undefined") window.removeEventListener("online", this._online);
    const lost = { type: "error", code: "connection_lost", message: "connection lost" };
    for (const op of this.pendingOps.values()) op.reject(lost);
    this.pendingOps.clear();
    for (const id of [...this.connections.keys()]) this._closeConnection(id);
    this.published.clear();
    this.received.clear();
    this._setState("closed");
    if (this.joining) {
      this.joining.reject(refusal || { code: "connection_failed", message: `closed (${code})` });
      this.joining = null;
      return;
    }
    this.dispatchEvent(new CustomEvent("closed", { detail: { code, error: refusal } }));
  }

  /** Take one message from the server. @param {Message} msg @param {{refusal: Message | null}} told */
  _receive(msg, told) {
    if (msg.type === "ping") {
      this._send({ type: "pong", ts: msg.ts });
      return;
    }
    if (msg.type === "pong") {
      const rtt = Date.now() - Number(msg.ts) * 1000;
      if (rtt >= 0 && rtt < 60000) this.rtt = this.rtt ? 0.875 * this.rtt + 0.125 * rtt : rtt;
      return;
    }
    // Until this connection's welcome, an error is the server refusing it (a close follows).
    const joined = this.lostAt === 0 && this.welcome !== null;
    if (!joined && msg.type === "error") {
      told.refusal = msg;
      return;
    }
    this._followSpeaking(msg);
    this._followHeld(msg); // before the waiter: its author's own copy answers a request
    const waiter = msg.ref ? this.pending.get(msg.ref) : undefined;
    if (waiter && msg.type !== "welcome") {
      this.pending.delete(msg.ref);
      if (msg.type === "error") waiter.reject(msg);
      else waiter.resolve(msg);
      return;
    }
    if (msg.type === "op" && msg.author === this.me) {
      const op = this.pendingOps.get(msg.id);
      if (op) {
        this.pendingOps.delete(msg.id);
        this.recentOps.set(msg.id, { msg: op.msg, seq: Number(msg.seq) });
        if (this.recentOps.size > RECENT_OPS) this.recentOps.delete(this.recentOps.keys().next().value || "");
        op.resolve(msg);
      }
    }
    if (msg.type === "error" && msg.ref && this.pendingOps.has(msg.ref)) {
      const op = this.pendingOps.get(msg.ref);
      this.pendingOps.delete(msg.ref);
      if (op) op.reject(msg);
    }
    this._followMedia(msg);
    if (msg.type === "welcome") {
      const again = this.welcome !== null;
      this.attempt = 0;
      this.lostAt = 0;
      this.welcome = msg;
      this._track(msg);
      this._setState(msg.state);
      if (this.joining) {
        this.joining.resolve(msg);
        this.joining = null;
      }
      this._redo(msg);
      if (again) this._heal(msg);
    } else {
      this._track(msg);
    }
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
  }

  /** Keep who speaks in step with the server; a "speaking" event says when it changed. @param {Message} msg */
  _followSpeaking(msg) {
    if ((msg.type === "welcome" && msg.state === "joined") || msg.type === "admitted") {
      this.speaking = new Map();
      for (const s of msg.speaking || []) this._speaks(s.participant_id, s.feed, true);
    } else if (msg.type === "speaking") {
      this._speaks(msg.participant_id, msg.feed, Boolean(msg.speaking));
    } else if (msg.type === "left") {
      this.speaking.delete(msg.participant_id);
    } else if (msg.type === "stream_removed") {
      const prefix = `${msg.stream_id}.`;
      for (const [who, feeds] of this.speaking) {
        for (const f of [...feeds]) if (f.startsWith(prefix)) feeds.delete(f);
        if (!feeds.size) this.speaking.delete(who);
      }
    } else {
      return;
    }
    this.dispatchEvent(new CustomEvent("speaking", { detail: this.speaking }));
  }

  /** @param {string} who @param {string} feed @param {boolean} on */
  _speaks(who, feed, on) {
    const feeds = this.speaking.get(who) || new Set();
    if (on) feeds.add(feed);
    else feeds.delete(feed);
    if (feeds.size) this.speaking.set(who, feeds);
    else this.speaking.delete(who);
  }

  /** Keep the held frame in step; a "held" event says when it changed. @param {Message} msg */
  _followHeld(msg) {
    let held = this.held;
    if ((msg.type === "welcome" && msg.state === "joined") || msg.type === "admitted") held = msg.held || null;
    else if (msg.type === "frame_held") held = msg;
    // A slow reader is sent only the newest held frame: a release of an older one is not for it.
    else if (msg.type === "frame_released" && this.held && this.held.id === msg.id) held = null;
    if (held === this.held) return;
    this.held = held;
    this.dispatchEvent(new CustomEvent("held", { detail: held }));
  }

  /**
   * Hold a still frame of a feed up for everyone (docs/protocol.md, "hold_frame").
   * @param {string} feed @param {string} image a JPEG in base64 @param {number} [mediaTs] the frame's RTP time
   * @returns {Promise<Message>} the frame_held event
   */
  holdFrame(feed, image, mediaTs) {
    /** @type {Message} */
    const msg = { type: "hold_frame", feed, image };
    if (mediaTs !== undefined) msg.media_ts = mediaTs;
    return this.request(msg);
  }

  /** Stop showing the held frame (its author, or a moderator). @returns {Promise<Message>} */
  releaseFrame() {
    return this.request({ type: "release_frame" });
  }

  /** Keep what this participant publishes and receives in step with the server's events. @param {Message} msg */
  _followMedia(msg) {
    if (msg.type === "stream_removed") {
      const id = String(msg.stream_id);
      if (this.published.delete(id)) this._closeConnection(id);
      const held = this.received.get(id);
      if (held) {
        this.received.delete(id);
        this._closeConnection(held.sub.id);
      }
    }
    if (msg.type === "unsubscribed") {
      const entry = [...this.received.entries()].find(([, r]) => r.sub.id === msg.stream);
      // The server ended it because its path failed: receive the stream again.
      if (entry && msg.reason === "failed") this._resubscribe(entry[0], false);
      else if (entry) {
        this.received.delete(entry[0]);
        this._closeConnection(String(msg.stream));
      }
    }
    if (msg.type === "stream_state" && msg.state === "reconnecting" && this.published.has(msg.stream_id)) {
      // The server lost this stream's media (a new address, a cut longer than ICE consent).
      this._republish(String(msg.stream_id), true);
    }
  }

  /**
   * After a reconnect: make again the media the server lost or ended while this client was away,
   * and publish anew what the room no longer knows (the grace ran out).
   * @param {Message} welcome
   */
  _heal(welcome) {
    /** @type {Map<string, Message>} */
    const streams = new Map((welcome.streams || []).map((/** @type {Message} */ s) => [s.id, s]));
    for (const [id, pub] of [...this.published]) {
      const known = streams.get(id);
      if (!known || known.state === "reconnecting" || dead(pub.pc)) this._republish(id, Boolean(known));
    }
    const held = new Set(welcome.subscriptions || []);
    for (const [streamId, r] of [...this.received]) {
      if (!streams.has(streamId)) {
        this.received.delete(streamId);
        this._closeConnection(r.sub.id);
      } else if (!held.has(r.sub.id) || dead(r.sub.pc)) {
        this._resubscribe(streamId, held.has(r.sub.id));
      }
    }
  }

  /** Whether requests can be made now. */
  _live() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.lostAt === 0 && this.welcome !== null;
  }

  /** Watch a peer connection; a failed one is made again at once while connected. @param {RTCPeerConnection} pc @param {() => void} heal */
  _watchMedia(pc, heal) {
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed" && this._live()) heal();
    });
  }

  /**
   * Publish a stream's tracks again on a new peer connection: under its id while the room keeps
   * it (viewers' subscriptions go on), else as a new stream. Emits "published".
   * @param {string} streamId @param {boolean} keep
   */
  async _republish(streamId, keep) {
    const pub = this.published.get(streamId);
    if (!pub || pub.healing || !this._live()) return;
    pub.healing = true;
    pub.pc.close();
    this.connections.delete(streamId);
    try {
      let out;
      try {
        out = await this._offer(pub.feeds, pub.options, keep ? streamId : undefined);
      } catch (err) {
        const code = /** @type {Message} */ (err).code;
        if (!keep || (code !== "no_such_stream" && code !== "feeds_mismatch")) throw err;
        out = await this._offer(pub.feeds, pub.options, undefined);
      }
      this.published.delete(streamId);
      this._keepPublished(out, pub.feeds, pub.options);
      this.dispatchEvent(new CustomEvent("published", { detail: { ...out, previous: streamId } }));
    } catch {
      // Lost again on the way: the next welcome finds the connection closed and tries again.
    } finally {
      pub.healing = false;
    }
  }

  /**
   * Receive a stream again on a new peer connection. Emits "subscribed".
   * @param {string} streamId @param {boolean} held whether the server still holds the old one
   */
  async _resubscribe(streamId, held) {
    const r = this.received.get(streamId);
    if (!r || r.healing || !this._live()) return;
    r.healing = true;
    this._closeConnection(r.sub.id);
    if (held) this._send({ type: "unsubscribe", stream: r.sub.id });
    try {
      const sub = await this.subscribe(streamId, r.feeds);
      this.dispatchEvent(new CustomEvent("subscribed", { detail: { ...sub, previous: r.sub.id } }));
    } catch (err) {
      // Gone meanwhile: its stream_removed tells the page. Otherwise the next welcome retries.
      if (/** @type {Message} */ (err).code === "no_such_stream") this.received.delete(streamId);
    } finally {
      r.healing = false;
    }
  }

  /** Send a client message (docs/protocol.md, "Client messages"). */
  send(/** @type {Message} */ msg) {
    this._send(msg);
  }

  /**
   * Send a message and wait for the reply that refers to it (rejects with the error message).
   * @param {Message} msg
   * @returns {Promise<Message>}
   */
  request(msg) {
    const ref = `r${++this.nextRef}`;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this._send({ ...msg, id: ref });
    });
  }

  /**
   * Publish tracks as one stream (docs/protocol.md, "publish"). If its media path is lost, it is
   * published again by itself (a "published" event says so).
   * @param {Feed[]} feeds
   * @param {PublishOptions} [options]
   * @returns {Promise<Publication>}
   */
  async publish(feeds, options = {}) {
    const out = await this._offer(feeds, options, undefined);
    this._keepPublished(out, feeds, options);
    return out;
  }

  /** @param {Publication} out @param {Feed[]} feeds @param {PublishOptions} options */
  _keepPublished(out, feeds, options) {
    this.published.set(out.id, { feeds, options, pc: out.pc, healing: false });
    this._watchMedia(out.pc, () => this._republish(out.id, true));
  }

  /**
   * Offer tracks on a new peer connection; with `streamId`, as that stream's new media.
   * @param {Feed[]} feeds @param {PublishOptions} options @param {string | undefined} streamId
   * @returns {Promise<Publication>}
   */
  async _offer(feeds, options, streamId) {
    const pc = new RTCPeerConnection(this.rtcConfiguration());
    const added = feeds.map((f) => {
      const policy = f.track.kind === "video" ? SEND_POLICY[f.source] : undefined;
      if (policy) f.track.contentHint = policy.contentHint;
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: "sendonly" };
      if (policy) {
        init.sendEncodings = options.simulcast === false
          ? [{ maxBitrate: policy.maxBitrate }] : layers(policy.maxBitrate, f.track.getSettings());
      }
      return { ...f, policy, transceiver: pc.addTransceiver(f.track, init) };
    });
    const videoCodec = options.videoCodec;
    if (videoCodec) {
      const codecs = RTCRtpSender.getCapabilities("video")?.codecs || [];
      const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${videoCodec.toLowerCase()}` &&
        (!options.h264Profile || (c.sdpFmtpLine || "").includes(`profile-level-id=${options.h264Profile}`)));
      const rtx = codecs.filter((c) => c.mimeType.toLowerCase() === "video/rtx");
      for (const a of added) if (a.track.kind === "video") a.transceiver.setCodecPreferences([...wanted, ...rtx]);
    }
    try {
      await pc.setLocalDescription();
      await gathered(pc);
      /** @type {Message} */
      const msg = {
        type: "publish",
        sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
        feeds: added.map((a) => ({ mid: a.transceiver.mid, source: a.source, label: a.label || "", ...geometry(a) })),
      };
      if (streamId) msg.stream = streamId;
      const reply = await this.request(msg);
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      for (const a of added) if (a.policy) await keep(a.transceiver.sender, a.policy.degradationPreference);
      this.connections.set(reply.stream, pc);
      return { id: reply.stream, pc, feeds: new Map(added.map((a) => [a.track, `${reply.stream}.${a.transceiver.mid}`])) };
    } catch (err) {
      pc.close();
      throw err;
    }
  }

  /**
   * Send another track in place of one (another microphone or camera), without a new offer;
   * a stream published again after a network change sends the new one.
   * @param {string} streamId @param {MediaStreamTrack} old @param {MediaStreamTrack} track
   */
  async replaceTrack(streamId, old, track) {
    const pub = this.published.get(streamId);
    if (!pub) return;
    const sender = pub.pc.getSenders().find((x) => x.track === old);
    if (sender) await sender.replaceTrack(track);
    for (const f of pub.feeds) if (f.track === old) f.track = track;
  }

  /** Stop publishing a stream. @param {string} streamId */
  unpublish(streamId) {
    this._send({ type: "unpublish", stream: streamId });
    this.published.delete(streamId);
    this._closeConnection(streamId);
  }

  /**
   * Receive a published stream (docs/protocol.md, "subscribe"), optionally some of its feeds. If
   * its media path is lost, it is received again by itself (a "subscribed" event says so).
   * @param {string} streamId
   * @param {string[]} [feeds]
   * @returns {Promise<Subscription>}
   */
  async subscribe(streamId, feeds) {
    /** @type {Message} */
    const ask = { type: "subscribe", stream: streamId };
    if (feeds) ask.feeds = feeds;
    const offer = await this.request(ask);
    const pc = new RTCPeerConnection(this.rtcConfiguration());
    /** @type {Record<string, string>} */
    const feedOfMid = Object.fromEntries(offer.feeds.map((/** @type {{mid: string, feed: string}} */ f) => [f.mid, f.feed]));
    /** @type {Map<string, MediaStreamTrack>} */
    const tracks = new Map();
    pc.ontrack = (ev) => {
      const feed = ev.transceiver.mid ? feedOfMid[ev.transceiver.mid] : undefined;
      if (feed) tracks.set(feed, ev.track);
    };
    try {
      await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
      await pc.setLocalDescription();
      await gathered(pc);
    } catch (err) {
      pc.close();
      this._send({ type: "unsubscribe", stream: offer.stream });
      throw err;
    }
    this.connections.set(offer.stream, pc);
    this._send({ type: "answer", stream: offer.stream, sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp });
    const sub = { id: String(offer.stream), of: streamId, pc, tracks };
    this.received.set(streamId, { sub, feeds, healing: false });
    this._watchMedia(pc, () => this._resubscribe(streamId, true));
    return sub;
  }

  /**
   * Stop (or start again) receiving feeds of a subscription that are not shown (docs/protocol.md,
   * "pause"); shown again, they come back from a keyframe.
   * @param {string} subscriptionId @param {boolean} paused @param {string[]} [feeds] all if omitted
   */
  pause(subscriptionId, paused, feeds) {
    /** @type {Message} */
    const msg = { type: "pause", stream: subscriptionId, paused };
    if (feeds) msg.feeds = feeds;
    this._send(msg);
  }

  /** Stop receiving a subscription. @param {string} subscriptionId */
  unsubscribe(subscriptionId) {
    this._send({ type: "unsubscribe", stream: subscriptionId });
    for (const [streamId, r] of this.received) if (r.sub.id === subscriptionId) this.received.delete(streamId);
    this._closeConnection(subscriptionId);
  }

  /**
   * After a reconnect: send again what the room does not have of this participant's operations.
   * @param {Message} welcome
   */
  _redo(welcome) {
    const waiting = [...this.pendingOps.values()];
    const roomSeq = welcome.channel ? Number(welcome.channel.seq) : Infinity;
    // Acknowledged, yet past the room's last operation: lost with a node; in their old order.
    const lost = [...this.recentOps.values()].filter((r) => r.seq > roomSeq).sort((a, b) => a.seq - b.seq);
    for (const r of lost) {
      this.recentOps.delete(String(r.msg.id));
      this.order(r.msg).catch(() => {});
    }
    for (const op of waiting) this._send(op.msg);
  }

  /** @param {string} id */
  _closeConnection(id) {
    const pc = this.connections.get(id);
    if (pc) {
      pc.close();
      this.connections.delete(id);
    }
  }

  /**
   * Send an ordered operation (annotation, chat, hand) and wait for its place in the order.
   * @param {Message} msg without `id`: one is made
   * @returns {Promise<Message>} the ordered `op` event
   */
  order(msg) {
    const id = msg.id || (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
    const full = { ...msg, id };
    return new Promise((resolve, reject) => {
      this.pendingOps.set(id, { resolve, reject, msg: full });
      this._send(full);
    });
  }

  /**
   * Draw (or delete, undo, clear) on a feed. @param {{op: string, [key: string]: any}} op
   * @returns {Promise<Message>}
   */
  annotate(op) {
    return this.order({ ...op, type: "annotate" });
  }

  /** Move this participant's pointer (no points hides it). @param {string} feed @param {number[][]} points @param {number} [mediaTs] */
  point(feed, points, mediaTs) {
    /** @type {Message} */
    const msg = { type: "annotate", op: "pointer", feed, points };
    if (mediaTs !== undefined) msg.media_ts = mediaTs;
    this._send(msg);
  }

  /** Post a chat message. @param {string} text */
  chat(text) {
    return this.order({ type: "chat", text });
  }

  /** Raise or lower this participant's hand. @param {boolean} raised */
  raiseHand(raised) {
    return this.order({ type: "raise_hand", raised });
  }

  /** The peer connection settings: the TURN servers from the welcome, relay-only if asked. */
  rtcConfiguration() {
    /** @type {RTCConfiguration} */
    const config = { iceServers: this.welcome ? this.welcome.ice_servers : [] };
    if (this.relayOnly) config.iceTransportPolicy = "relay";
    return config;
  }

  /** Leave the room for good. */
  leave() {
    this.leaving = true;
    this._send({ type: "leave" });
  }

  /** @param {Message} msg */
  _send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** @param {string} state */
  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  /** Keep participants and the channel current from the events that change them. @param {Message} msg */
  _track(msg) {
    this._trackParticipants(msg);
    // After the participants, so that whoever draws the channel can name its authors.
    if ((msg.type === "welcome" || msg.type === "admitted") && msg.channel) this.channel.load(msg.channel);
    if (msg.type === "op") this.channel.apply(/** @type {any} */ (msg));
    if (msg.type === "pointer") this.channel.point(/** @type {any} */ (msg));
    if (msg.type === "left") this.channel.forget(msg.participant_id);
    this.seq = this.channel.seq;
  }

  /** @param {Message} msg */
  _trackParticipants(msg) {
    switch (msg.type) {
      case "welcome":
      case "admitted":
        if (msg.participants) {
          this.participants = new Map(msg.participants.map((/** @type {ParticipantInfo} */ p) => [p.id, p]));
        }
        if (msg.type === "admitted") this._setState("joined");
        break;
      case "joined":
        this.participants.set(msg.participant.id, msg.participant);
        break;
      case "left":
        this.participants.delete(msg.participant_id);
        break;
      case "role_changed":
      case "muted":
      case "granted": {
        const p = this.participants.get(msg.participant_id);
        if (p) {
          if (msg.type === "role_changed") p.role = msg.role;
          else if (msg.type === "muted") p.muted = msg.muted;
          else Object.assign(p, { may_annotate: msg.may_annotate, floor: msg.floor });
        }
        break;
      }
    }
  }
}
