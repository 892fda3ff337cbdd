// teleconsult signaling protocol for browsers: no DOM here, so any page or tool can build on it.
// The contract is docs/protocol.md.

export const PROTOCOL_VERSION = 1;

// Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes").
const FINAL_CLOSES = new Set([4000, 4001, 4005, 4009, 4010, 4011, 4012, 4013]);

/**
 * @typedef {{type: string, [key: string]: any}} Message
 * @typedef {{id: string, identity: string, name: string, role: string, muted: boolean,
 *            joined_at: number}} ParticipantInfo
 */

/** A participant's signaling session; emits "message", "state" and "closed" events. */
export class Session extends EventTarget {
  /**
   * @param {{url: string, room: string, token: string, retries?: number}} options
   */
  constructor({ url, room, token, retries = 10 }) {
    super();
    this.url = url;
    this.room = room;
    this.token = token;
    this.retries = retries;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {Message | null} */
    this.welcome = null;
    /** @type {Map<string, ParticipantInfo>} */
    this.participants = new Map();
    this.state = "idle";
    this.attempt = 0;
    this.leaving = false;
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
        this._send({ type: "hello", version: PROTOCOL_VERSION, room: this.room, token: this.token });
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
        if (!settled && msg.type === "welcome") {
          settled = true;
          this.attempt = 0;
          this.welcome = msg;
          this._track(msg);
          this._setState(msg.state);
          resolve(msg);
        } else {
          this._track(msg);
        }
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
      };
      ws.onclose = (ev) => {
        const final = FINAL_CLOSES.has(ev.code) || this.leaving;
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

  /** Keep the participant list current from the events that change it. @param {Message} msg */
  _track(msg) {
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
      case "muted": {
        const p = this.participants.get(msg.participant_id);
        if (p) {
          if (msg.type === "role_changed") p.role = msg.role;
          else p.muted = msg.muted;
        }
        break;
      }
    }
  }
}
