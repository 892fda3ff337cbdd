// The operator's feeds: choose the image source (a capture card is a camera, a screen is shared),
// the room camera and the microphone; label, scale, preview, start and stop each. What runs is
// started again after a reload of the tab.

import { t } from "./i18n.js";
import { keepFeeds, keptFeeds } from "./tab.js";

/** @typedef {import("./protocol.js").Session} Session @typedef {import("./feeds.js").Stage} Stage */

const ROWS = [
  { key: "source", kind: "video", sources: ["probe", "laparoscope", "camera", "screen"] },
  { key: "camera", kind: "video", sources: ["camera", "screen"] },
  { key: "microphone", kind: "audio", sources: ["microphone"] },
];

/**
 * @typedef {{stream: string, media: MediaStream, feed: string, source: string, label: string,
 *            device: string, depth: string}} Running
 * @typedef {{row: {key: string, kind: string}, device: HTMLSelectElement, source: HTMLSelectElement,
 *            label: HTMLInputElement, depth: HTMLInputElement | null, button: HTMLButtonElement}} Controls
 */

/**
 * Millimetres per pixel of a picture whose full height shows `depth` centimetres, if both are known.
 * @param {string} depth @param {number | undefined} height
 */
export function spacing(depth, height) {
  const cm = Number(depth);
  return cm > 0 && cm <= 100 && height ? Math.round((cm * 10 * 1e6) / height) / 1e6 : null;
}

/** The device panel of the operator (and of anyone else who may publish). */
export class Devices {
  /** @param {Session} session @param {Stage} stage @param {HTMLElement} root @param {(text: string) => void} problem */
  constructor(session, stage, root, problem) {
    this.session = session;
    this.stage = stage;
    this.root = root;
    this.problem = problem;
    /** @type {Map<string, Running>} row key → what it publishes */
    this.live = new Map();
    /** @type {Map<string, Controls>} row key → its controls */
    this.controls = new Map();
    this.restored = false;
    session.addEventListener("published", (ev) => this._renew(/** @type {CustomEvent} */ (ev).detail));
    // The server ended one of our streams (a role that may no longer send it): stop capturing
    // it and say so on its row, rather than show "Stop" over a camera that sends nowhere.
    session.addEventListener("message", (ev) => {
      const msg = /** @type {CustomEvent} */ (ev).detail;
      if (msg.type !== "stream_removed" || msg.reason === "unpublished") return;
      for (const [key, running] of this.live) if (running.stream === msg.stream_id) this._stopped(key);
    });
  }

  /** A row's feed is no longer sent: stop its capture and preview, and mark it. @param {string} key */
  _stopped(key) {
    const running = this.live.get(key);
    if (!running) return;
    running.media.getTracks().forEach((tr) => tr.stop());
    this.stage.hide(running.feed);
    this.live.delete(key);
    this._mark(key);
    this._keep();
  }

  /**
   * A stream was published again after a network change. Under a new id only when the room had
   * dropped it (the network was away longer than the server's grace): show the preview under it.
   * @param {{id: string, previous: string, feeds: Map<MediaStreamTrack, string>}} published
   */
  _renew(published) {
    for (const running of this.live.values()) {
      if (running.stream !== published.previous || published.id === published.previous) continue;
      const track = running.media.getTracks()[0];
      const feed = published.feeds.get(track) || running.feed;
      this.stage.hide(running.feed);
      Object.assign(running, { stream: published.id, feed });
      if (track.kind === "video") this.stage.show({ id: feed, kind: "video", source: running.source, label: running.label }, running.media, true);
    }
  }

  /** List the devices and build one row per feed; the first time, start what ran before a reload. */
  async build() {
    let devices = await navigator.mediaDevices.enumerateDevices();
    if (devices.some((d) => !d.label)) {
      // Labels appear once the page may use the devices: ask once, then list again.
      try {
        const probe = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        probe.getTracks().forEach((tr) => tr.stop());
        devices = await navigator.mediaDevices.enumerateDevices();
      } catch {
        this.problem(t("problem.no_camera"));
      }
    }
    const cams = devices.filter((d) => d.kind === "videoinput");
    const mics = devices.filter((d) => d.kind === "audioinput");
    if (!cams.length) this.problem(t("problem.no_devices"));
    this.root.replaceChildren();
    this.controls.clear();
    ROWS.forEach((row, i) => {
      const list = row.kind === "video" ? cams : mics;
      const line = this._row(row, list);
      // The image source and the room camera default to different cameras when there are two.
      if (row.key === "camera" && list.length > 1) line.device.selectedIndex = 1;
      if (i === 0 && !list.length) /** @type {HTMLElement} */ (line.button.parentElement).hidden = true;
    });
    if (!this.restored) {
      this.restored = true;
      await this._restore();
    }
  }

  /**
   * One row: device, what it shows, label, depth (the image source), start/stop.
   * @param {{key: string, kind: string, sources: string[]}} row @param {MediaDeviceInfo[]} list
   */
  _row(row, list) {
    const line = document.createElement("div");
    line.className = "device";
    line.dataset.row = row.key;
    const name = document.createElement("span");
    name.dataset.i18n = `devices.${row.key}`;
    name.textContent = t(`devices.${row.key}`);
    const device = document.createElement("select");
    device.className = "device-select";
    device.setAttribute("aria-label", t(`devices.${row.key}`));
    for (const d of list) device.append(new Option(d.label || d.deviceId.slice(0, 8), d.deviceId));
    const source = document.createElement("select");
    source.className = "source-select";
    source.setAttribute("aria-label", t("devices.kind"));
    for (const s of row.sources) source.append(new Option(t(`source.${s}`), s));
    const label = document.createElement("input");
    label.className = "label-input";
    label.maxLength = 80;
    label.placeholder = t("devices.label");
    label.setAttribute("aria-label", t("devices.label"));
    /** @type {HTMLInputElement | null} */
    let depth = null;
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "toggle";
    toggle.addEventListener("click", () => this.toggle(row.key));
    toggle.disabled = !list.length;
    line.append(name, device, source, label);
    if (row.key === "source") {
      // The machine's depth setting: what the picture's full height shows, for rulers in mm.
      depth = document.createElement("input");
      depth.className = "depth-input";
      depth.type = "number";
      depth.min = "0.5";
      depth.max = "100";
      depth.step = "0.5";
      depth.inputMode = "decimal";
      depth.placeholder = t("devices.depth");
      depth.setAttribute("aria-label", t("devices.depth_help"));
      depth.title = t("devices.depth_help");
      depth.addEventListener("change", () => this._rescale());
      line.append(depth);
    }
    line.append(toggle);
    this.root.append(line);
    const controls = { row, device, source, label, depth, button: toggle };
    this.controls.set(row.key, controls);
    this._mark(row.key);
    return controls;
  }

  /** Start again the feeds this tab sent before it was reloaded (a shared screen needs a click). */
  async _restore() {
    for (const kept of keptFeeds(this.session.room)) {
      const c = this.controls.get(kept.row);
      if (!c || this.live.has(kept.row) || kept.source === "screen") continue;
      if ([...c.device.options].some((o) => o.value === kept.device)) c.device.value = kept.device;
      c.source.value = kept.source;
      c.label.value = kept.label;
      if (c.depth) c.depth.value = kept.depth || "";
      await this.toggle(kept.row);
    }
  }

  /** Show a row's button as its feed runs or not. @param {string} key */
  _mark(key) {
    const c = this.controls.get(key);
    if (!c) return;
    const on = this.live.has(key);
    c.button.dataset.i18n = on ? "devices.stop" : "devices.start";
    c.button.textContent = t(c.button.dataset.i18n);
    c.button.setAttribute("aria-pressed", String(on));
  }

  /** Keep what runs, to start it again after a reload. */
  _keep() {
    keepFeeds(this.session.room, [...this.live].map(([row, r]) => ({ row, device: r.device, source: r.source, label: r.label, depth: r.depth })));
  }

  /** Start or stop one row's feed. @param {string} key */
  async toggle(key) {
    const c = this.controls.get(key);
    if (!c) return;
    const running = this.live.get(key);
    if (running) {
      this.session.unpublish(running.stream);
      this._stopped(key);
      return;
    }
    c.button.disabled = true;
    try {
      const media = await this._capture(c);
      const track = media.getTracks()[0];
      const depth = c.depth ? c.depth.value : "";
      const published = await this.session.publish([{ track, source: c.source.value, label: c.label.value, pixelSpacingMm: spacing(depth, track.getSettings().height) }]);
      const feed = /** @type {string} */ (published.feeds.get(track));
      this.live.set(key, { stream: published.id, media, feed, source: c.source.value, label: c.label.value, device: c.device.value, depth });
      // A shared screen can be stopped from the browser's own bar.
      track.addEventListener("ended", () => {
        if (this.live.get(key)?.media === media) this.toggle(key);
      });
      if (c.row.kind === "video") {
        this.stage.show({ id: feed, kind: "video", source: c.source.value, label: c.label.value }, media, true);
      }
      this._mark(key);
      this._keep();
    } catch (err) {
      const e = /** @type {any} */ (err);
      this.problem(e && e.code === "forbidden" ? t("problem.forbidden") : t("problem.no_camera"));
    } finally {
      c.button.disabled = false;
    }
  }

  /** The camera, microphone or screen a row sends. @param {Controls} c */
  _capture(c) {
    if (c.source.value === "screen") {
      return navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    }
    return navigator.mediaDevices.getUserMedia(c.row.kind === "video"
      ? { video: { deviceId: { exact: c.device.value }, width: { ideal: 1280 }, height: { ideal: 720 } } }
      : { audio: { deviceId: { exact: c.device.value }, echoCancellation: true } });
  }

  /** The depth changed while the image is sent: tell the room the new scale. */
  _rescale() {
    const c = this.controls.get("source");
    const running = this.live.get("source");
    if (!c?.depth || !running) return;
    running.depth = c.depth.value;
    const height = running.media.getVideoTracks()[0]?.getSettings().height;
    this.session.send({ type: "set_scale", feed: running.feed, pixel_spacing_mm: spacing(running.depth, height) });
    this._keep();
  }

  /** Stop sending every feed still sent (this participant is no longer the operator). */
  async stopAll() {
    for (const [key, running] of [...this.live]) {
      // One the server already ended is only stopped here (see the stream_removed follower).
      if (this.session.published.has(running.stream)) await this.toggle(key);
      else this._stopped(key);
    }
  }

  /**
   * The session is over: the server dropped our streams; stop every capture and mark every feed
   * stopped. @param {boolean} forget whether a reload should not start them again
   */
  reset(forget = false) {
    for (const running of this.live.values()) {
      running.media.getTracks().forEach((tr) => tr.stop());
      this.stage.hide(running.feed);
    }
    this.live.clear();
    for (const key of this.controls.keys()) this._mark(key);
    if (forget) this._keep();
  }
}
