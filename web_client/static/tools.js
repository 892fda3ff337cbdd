// The annotation toolbar (with keyboard shortcuts), talk-back with push-to-talk, and the
// health line of the main feed.

import { TOOLS } from "./annotations.js";
import { chosenMicrophone } from "./audio.js";
import { t } from "./i18n.js";
import { HealthMeter } from "./stats.js";

/** @typedef {import("./protocol.js").Session} Session @typedef {import("./feeds.js").Stage} Stage */

const KEYS = { p: "pointer", a: "arrow", f: "stroke", r: "ruler", e: "ellipse", t: "text" };

/** The drawing tools; they apply to every overlay on the stage. */
export class Toolbar {
  /** @param {Session} session @param {Stage} stage */
  constructor(session, stage) {
    this.session = session;
    this.stage = stage;
    this.tool = "pointer";
    this.root = /** @type {HTMLElement} */ (document.getElementById("toolbar"));
    const tools = /** @type {HTMLElement} */ (document.getElementById("tools"));
    for (const name of TOOLS) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.tool = name;
      b.dataset.i18n = `tools.${name}`;
      b.textContent = t(`tools.${name}`);
      b.title = `${t(`tools.${name}`)} (${Object.entries(KEYS).find(([, v]) => v === name)?.[0].toUpperCase()})`;
      b.addEventListener("click", () => this.select(name));
      tools.append(b);
    }
    this.color = /** @type {HTMLInputElement} */ (document.getElementById("color"));
    this.color.addEventListener("input", () => this.apply());
    document.getElementById("undo")?.addEventListener("click", () => this.undo());
    document.getElementById("clear")?.addEventListener("click", () => session.annotate({ op: "clear", scope: "own" }).catch(() => {}));
    document.getElementById("clear-all")?.addEventListener("click", () => session.annotate({ op: "clear", scope: "all" }).catch(() => {}));
    document.addEventListener("keydown", (ev) => {
      if (!this.allowed() || isTyping(ev)) return;
      const key = ev.key.toLowerCase();
      if ((ev.ctrlKey || ev.metaKey) && key === "z") {
        ev.preventDefault();
        this.undo();
      } else if (!ev.ctrlKey && !ev.metaKey && !ev.altKey && key in KEYS) {
        this.select(KEYS[/** @type {keyof typeof KEYS} */ (key)]);
      }
    });
    stage.addEventListener("change", () => this.apply());
    session.addEventListener("message", () => this.apply());
    this.select("pointer");
  }

  /** Whether this participant may draw now (its role, or a moderator's grant). */
  allowed() {
    const me = this.session.participants.get(this.session.me);
    const role = this.session.role;
    return role === "operator" || role === "expert" || role === "moderator" || Boolean(me && me.may_annotate);
  }

  /** @param {string} name */
  select(name) {
    this.tool = name;
    for (const b of this.root.querySelectorAll("button[data-tool]")) {
      b.setAttribute("aria-pressed", String(/** @type {HTMLElement} */ (b).dataset.tool === name));
    }
    this.apply();
  }

  undo() {
    this.session.annotate({ op: "undo" }).catch(() => {});
  }

  /** Push the tool, colour and permission to every overlay. */
  apply() {
    const allowed = this.allowed();
    this.root.hidden = false;
    for (const b of this.root.querySelectorAll("button, input")) /** @type {HTMLButtonElement} */ (b).disabled = !allowed;
    const off = document.getElementById("tools-off");
    if (off) off.hidden = allowed;
    const clearAll = document.getElementById("clear-all");
    if (clearAll) clearAll.hidden = this.session.role !== "moderator";
    for (const o of this.stage.overlays()) {
      o.tool = this.tool;
      o.color = this.color.value;
      o.setEnabled(allowed);
    }
  }
}

/**
 * Keys for looking at the main picture, for every role (docs/web_client.md, "Keys"): H holds the
 * frame, G shows the held frame to everyone (or takes it down), M fills the screen, + and −
 * zoom, 0 shows the whole picture, the arrows pan.
 * @param {Stage} stage
 */
export function watchViewKeys(stage) {
  /** @type {Record<string, (tile: import("./viewer.js").TileView) => void>} */
  const actions = {
    h: (tile) => tile.toggleFreeze(),
    g: (tile) => {
      if (!tile.holdButton.hidden) tile.holdButton.click();
    },
    m: (tile) => tile.fullscreen(),
    "+": (tile) => tile.zoomBy(1.25),
    "=": (tile) => tile.zoomBy(1.25),
    "-": (tile) => tile.zoomBy(0.8),
    0: (tile) => tile.reset(),
    ArrowLeft: (tile) => tile.pan(40, 0),
    ArrowRight: (tile) => tile.pan(-40, 0),
    ArrowUp: (tile) => tile.pan(0, 40),
    ArrowDown: (tile) => tile.pan(0, -40),
  };
  document.addEventListener("keydown", (ev) => {
    if (isTyping(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const action = actions[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
    const tile = stage.mainTile();
    if (!action || !tile || (ev.key.startsWith("Arrow") && tile.scale === 1)) return;
    ev.preventDefault();
    action(tile);
  });
}

/** @param {KeyboardEvent} ev */
function isTyping(ev) {
  const target = /** @type {HTMLElement | null} */ (ev.target);
  return Boolean(target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT"));
}

// A press on the talk button longer than this is push-to-talk (released, the microphone goes
// off); a shorter one is a tap that switches it on or off.
const HOLD_MS = 300;

/**
 * Talk-back: the microphone as its own stream, muted by default; push-to-talk by holding Space
 * (a USB foot pedal sends a key) or the button itself (a touch screen, a gloved hand).
 */
export class TalkBack {
  /** @param {Session} session */
  constructor(session) {
    this.session = session;
    /** @type {MediaStreamTrack | null} */
    this.track = null;
    this.stream = "";
    this.ptt = false;
    /** @type {ReturnType<typeof setTimeout> | null} a press not yet long enough to be a hold */
    this.press = null;
    this.swallowClick = false;
    this.button = /** @type {HTMLButtonElement} */ (document.getElementById("talk-button"));
    this.button.addEventListener("click", () => {
      if (this.swallowClick) this.swallowClick = false;
      else this.set(!this.on());
    });
    this.button.addEventListener("pointerdown", () => {
      if (this.on()) return;
      this.press = setTimeout(() => {
        this.press = null;
        this.ptt = true;
        this.set(true);
      }, HOLD_MS);
    });
    for (const name of ["pointerup", "pointercancel", "pointerleave"]) this.button.addEventListener(name, () => this._release(name === "pointerup"));
    this.button.addEventListener("contextmenu", (ev) => ev.preventDefault()); // a long touch is a hold, not a menu
    document.addEventListener("keydown", (ev) => {
      if (ev.code === "Space" && !ev.repeat && !isTyping(ev) && !this.on()) {
        ev.preventDefault();
        this.ptt = true;
        this.set(true);
      }
    });
    document.addEventListener("keyup", (ev) => {
      if (ev.code === "Space" && this.ptt) {
        this.ptt = false;
        this.set(false);
      }
    });
    // Published again under a new id (the room had dropped it while the network was away).
    session.addEventListener("published", (ev) => {
      const p = /** @type {CustomEvent} */ (ev).detail;
      if (p.previous === this.stream) this.stream = p.id;
    });
  }

  /** A press on the button ended. @param {boolean} clicks whether a click event follows */
  _release(clicks) {
    if (this.press) {
      clearTimeout(this.press);
      this.press = null;
    } else if (this.ptt) {
      this.ptt = false;
      this.swallowClick = clicks;
      this.set(false);
    }
  }

  on() {
    return Boolean(this.track && this.track.enabled);
  }

  /** Turn the microphone on or off, publishing it the first time. @param {boolean} on */
  async set(on) {
    if (on && !this.track) {
      try {
        this.track = await microphone(chosenMicrophone());
        const published = await this.session.publish([{ track: this.track, source: "microphone", label: "" }]);
        this.stream = published.id;
      } catch {
        this.track?.stop();
        this.track = null;
        return;
      }
    }
    if (this.track) this.track.enabled = on;
    this.session.send({ type: "set_muted", muted: !on });
    this._show(on);
  }

  /** Talk through another microphone from now on, without a pause. @param {string} deviceId */
  async useMicrophone(deviceId) {
    if (!this.track) return;
    const track = await microphone(deviceId);
    track.enabled = this.track.enabled;
    await this.session.replaceTrack(this.stream, this.track, track);
    this.track.stop();
    this.track = track;
  }

  /** @param {boolean} on */
  _show(on) {
    // The key stays on the element, so that translating the page keeps the state it shows.
    this.button.dataset.i18n = on ? "talk.on" : "talk.off";
    this.button.textContent = t(this.button.dataset.i18n);
    this.button.setAttribute("aria-pressed", String(on));
  }

  /** The session is over: the server dropped the stream; publish again when needed. */
  reset() {
    if (this.track) this.track.stop();
    this.track = null;
    this._show(false);
  }
}

/** A microphone's track: the chosen one, else (unplugged since) the default. @param {string} deviceId */
async function microphone(deviceId) {
  const audio = { echoCancellation: true, noiseSuppression: true };
  /** @type {MediaStream} */
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: deviceId ? { ...audio, deviceId: { exact: deviceId } } : audio });
  } catch (err) {
    if (!deviceId || /** @type {Error} */ (err).name !== "OverconstrainedError") throw err;
    media = await navigator.mediaDevices.getUserMedia({ audio });
  }
  return media.getAudioTracks()[0];
}

/** Shows delay, bitrate, frame rate and loss of the main received feed once a second. */
export function watchHealth(/** @type {Stage} */ stage, /** @type {HTMLElement} */ line) {
  /** @type {HealthMeter | null} */
  let meter = null;
  setInterval(async () => {
    const pc = stage.mainConnection();
    if (!pc) {
      line.textContent = "";
      meter = null;
      return;
    }
    if (!meter || meter.pc !== pc) meter = new HealthMeter(pc);
    const h = await meter.read();
    const size = h.width ? `${h.width}×${h.height}` : "—";
    line.textContent = t("stats.line", { delay: h.delayMs, kbps: h.kbps, fps: h.fps, loss: h.lossPct, size });
    line.dataset.framesDecoded = String(h.framesDecoded);
    // Voices come on their own streams: count what every subscription has played.
    let samples = 0;
    for (const other of stage.connections()) {
      (await other.getStats()).forEach((/** @type {any} */ s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") samples += s.totalSamplesReceived || 0;
      });
    }
    line.dataset.samplesReceived = String(samples);
  }, 1000);
}
