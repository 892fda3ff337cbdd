// teleconsult signaling protocol for browsers: no DOM here, so any page or tool can build on it.
// The contract is docs/protocol.md.

import { ChannelState } from "./channel.js";

export const PROTOCOL_VERSION = 1;

// Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes").
// How many of its own acknowledged operations a client keeps, to send again if a node lost them.
const RECENT_OPS = 200;
const FINAL_CLOSES = new Set([4000, 4001, 4005, 4009, 4010, 4011, 4012, 4013]);

/**
 * @typedef {{type: string, [key: string]: any}} Message
 * @typedef {{id: string, identity: string, name: string, role: string, muted: boolean,
 *            joined_at: number, may_annotate?: boolean, floor?: boolean}} ParticipantInfo
 */

/** A participant's signaling session; emits "message", "state" and "closed" events. */
export class Session extends EventTarget {
  /**
   * @param {{url: string, room: string, token: string, retries?: number, relayOnly?: boolean}} options
   *   relayOnly: send media only through the TURN servers the server hands out
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
    this.state = "idle";
    this.attempt = 0;
    this.leaving = false;
    /** @type {Map<string, {resolve: (m: Message) => void, reject: (e: Message) => void}>} */
    this.pending = new Map();
    this.nextRef = 0;
    /** The last channel sequence number seen, sent as `resume` when reconnecting. */
    this.seq = 0;
    /** @type {Map<string, RTCPeerConnection>} stream or subscription id → its connection */
    this.connections = new Map();
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
    return new Promise((resolve, reject) => {
      this._setState(this.attempt ? "reconnecting" : "connecting");
      const ws = new WebSocket(this.url);
      this.ws = ws;
      /** @type {Message | null} */
      let refusal = null;
      let settled = false;
      ws.onopen = () => {
        /** @type {Message} */
        const hello = { type: "hello", version: PROTOCOL_VERSION, room: this.room, token: this.token };
        if (this.welcome) hello.resume = this.seq; // a reconnect: ask for exactly what was missed
        this._send(hello);
      };
      ws.onmessage = (frame) => {
        /** @type {Message} */
        const msg = JSON.parse(frame.data);
        if (msg.type === "ping") {
          this._send({ type: "pong", ts: msg.ts });
          return;
        }
        if (!settled && msg.type === "error") {
          refusal = msg;
          return;
        }
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
        if (msg.type === "unsubscribed" || msg.type === "stream_removed") {
          this._closeConnection(msg.stream || msg.stream_id);
        }
        if (!settled && msg.type === "welcome") {
          settled = true;
          this.attempt = 0;
          this.welcome = msg;
          this._track(msg);
          this._setState(msg.state);
          resolve(msg);
          this._redo(msg);
        } else {
          this._track(msg);
        }
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
      };
      ws.onclose = (ev) => {
        const final = FINAL_CLOSES.has(ev.code) || this.leaving;
        // The server drops a connection's media with it; a reconnect publishes and subscribes anew.
        for (const id of [...this.connections.keys()]) this._closeConnection(id);
        const lost = { type: "error", code: "connection_lost", message: "connection lost" };
        for (const waiter of this.pending.values()) waiter.reject(lost);
        this.pending.clear();
        if (final || this.attempt >= this.retries) {
          for (const op of this.pendingOps.values()) op.reject(lost);
          this.pendingOps.clear();
        }
        if (!settled) {
          settled = true;
          if (final || this.attempt >= this.retries) {
            this._setState("closed");
            reject(refusal || { code: "connection_failed", message: `closed (${ev.code})` });
            return;
          }
        }
        if (!final && this.attempt < this.retries) {
          this.attempt += 1;
          const delay = Math.min(10000, 500 * 2 ** (this.attempt - 1));
          this._setState("reconnecting");
          setTimeout(() => this.connect().catch(() => {}), delay);
          return;
        }
        this._setState("closed");
        this.dispatchEvent(new CustomEvent("closed", { detail: { code: ev.code, reason: ev.reason, error: refusal } }));
      };
    });
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
   * Publish tracks as one stream (docs/protocol.md, "publish").
   * @param {{track: MediaStreamTrack, source: string, label?: string}[]} feeds
   * @param {{videoCodec?: string, h264Profile?: string}} [options]
   * @returns {Promise<{id: string, pc: RTCPeerConnection, feeds: Map<MediaStreamTrack, string>}>}
   */
  async publish(feeds, options = {}) {
    const pc = new RTCPeerConnection(this.rtcConfiguration());
    const added = feeds.map((f) => ({ ...f, transceiver: pc.addTransceiver(f.track, { direction: "sendonly" }) }));
    const videoCodec = options.videoCodec;
    if (videoCodec) {
      const codecs = RTCRtpSender.getCapabilities("video")?.codecs || [];
      const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${videoCodec.toLowerCase()}` &&
        (!options.h264Profile || (c.sdpFmtpLine || "").includes(`profile-level-id=${options.h264Profile}`)));
      const rtx = codecs.filter((c) => c.mimeType.toLowerCase() === "video/rtx");
      for (const a of added) if (a.track.kind === "video") a.transceiver.setCodecPreferences([...wanted, ...rtx]);
    }
    await pc.setLocalDescription();
    await gathered(pc);
    try {
      const reply = await this.request({
        type: "publish",
        sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
        feeds: added.map((a) => ({ mid: a.transceiver.mid, source: a.source, label: a.label || "" })),
      });
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      this.connections.set(reply.stream, pc);
      return { id: reply.stream, pc, feeds: new Map(added.map((a) => [a.track, `${reply.stream}.${a.transceiver.mid}`])) };
    } catch (err) {
      pc.close();
      throw err;
    }
  }

  /** Stop publishing a stream. @param {string} streamId */
  unpublish(streamId) {
    this._send({ type: "unpublish", stream: streamId });
    this._closeConnection(streamId);
  }

  /**
   * Receive a published stream (docs/protocol.md, "subscribe").
   * @param {string} streamId
   * @returns {Promise<{id: string, of: string, pc: RTCPeerConnection, tracks: Map<string, MediaStreamTrack>}>}
   */
  async subscribe(streamId) {
    const offer = await this.request({ type: "subscribe", stream: streamId });
    const pc = new RTCPeerConnection(this.rtcConfiguration());
    /** @type {Record<string, string>} */
    const feedOfMid = Object.fromEntries(offer.feeds.map((/** @type {{mid: string, feed: string}} */ f) => [f.mid, f.feed]));
    /** @type {Map<string, MediaStreamTrack>} */
    const tracks = new Map();
    pc.ontrack = (ev) => {
      const feed = ev.transceiver.mid ? feedOfMid[ev.transceiver.mid] : undefined;
      if (feed) tracks.set(feed, ev.track);
    };
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription();
    await gathered(pc);
    this.connections.set(offer.stream, pc);
    this._send({ type: "answer", stream: offer.stream, sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp });
    return { id: offer.stream, of: streamId, pc, tracks };
  }

  /** Stop receiving a subscription. @param {string} subscriptionId */
  unsubscribe(subscriptionId) {
    this._send({ type: "unsubscribe", stream: subscriptionId });
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

/**
 * Wait until a connection has gathered its ICE candidates (version 1 sends whole SDP).
 * @param {RTCPeerConnection} pc
 * @param {number} [timeoutMs]
 * @returns {Promise<void>}
 */
export function gathered(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    // Some networks never finish gathering; what was gathered by then must do.
    setTimeout(resolve, timeoutMs);
  });
}
