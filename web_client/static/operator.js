// The operator's feeds: choose the image source (a capture card is a camera), the room camera
// and the microphone; label, preview, start and stop each.

import { t } from "./i18n.js";

/** @typedef {import("./protocol.js").Session} Session @typedef {import("./feeds.js").Stage} Stage */

const ROWS = [
  { key: "source", kind: "video", sources: ["probe", "laparoscope", "camera", "screen"] },
  { key: "camera", kind: "video", sources: ["camera"] },
  { key: "microphone", kind: "audio", sources: ["microphone"] },
];

/** The device panel of the operator (and of anyone else who may publish). */
export class Devices {
  /** @param {Session} session @param {Stage} stage @param {HTMLElement} root @param {(text: string) => void} problem */
  constructor(session, stage, root, problem) {
    this.session = session;
    this.stage = stage;
    this.root = root;
    this.problem = problem;
    /** @type {Map<string, {stream: string, media: MediaStream, feed: string, source: string, label: string}>} row key → what it publishes */
    this.live = new Map();
    session.addEventListener("published", (ev) => this._renew(/** @type {CustomEvent} */ (ev).detail));
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

  /** List the devices and build one row per feed. */
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
    ROWS.forEach((row, i) => {
      const list = row.kind === "video" ? cams : mics;
      const line = document.createElement("div");
      line.className = "device";
      line.dataset.row = row.key;
      const name = document.createElement("span");
      name.dataset.i18n = `devices.${row.key}`;
      name.textContent = t(`devices.${row.key}`);
      const device = document.createElement("select");
      device.className = "device-select";
      for (const d of list) device.append(new Option(d.label || d.deviceId.slice(0, 8), d.deviceId));
      // The image source and the room camera default to different cameras when there are two.
      if (row.key === "camera" && list.length > 1) device.selectedIndex = 1;
      const source = document.createElement("select");
      source.className = "source-select";
      for (const s of row.sources) source.append(new Option(t(`source.${s}`), s));
      const label = document.createElement("input");
      label.className = "label-input";
      label.maxLength = 80;
      label.placeholder = t("devices.label");
      const toggle = document.createElement("button");
      toggle.type = "button";
      toggle.className = "toggle";
      toggle.textContent = t("devices.start");
      toggle.addEventListener("click", () => this.toggle(row, device, source, label, toggle));
      toggle.disabled = !list.length;
      line.append(name, device, source, label, toggle);
      this.root.append(line);
      if (i === 0 && !list.length) line.hidden = true;
    });
  }

  /**
   * Start or stop one feed.
   * @param {{key: string, kind: string}} row @param {HTMLSelectElement} device @param {HTMLSelectElement} source
   * @param {HTMLInputElement} label @param {HTMLButtonElement} button
   */
  async toggle(row, device, source, label, button) {
    const running = this.live.get(row.key);
    if (running) {
      this.session.unpublish(running.stream);
      running.media.getTracks().forEach((tr) => tr.stop());
      this.stage.hide(running.feed);
      this.live.delete(row.key);
      button.textContent = t("devices.start");
      button.setAttribute("aria-pressed", "false");
      return;
    }
    button.disabled = true;
    try {
      const constraints = row.kind === "video"
        ? { video: { deviceId: { exact: device.value }, width: { ideal: 1280 }, height: { ideal: 720 } } }
        : { audio: { deviceId: { exact: device.value }, echoCancellation: true } };
      const media = await navigator.mediaDevices.getUserMedia(constraints);
      const track = media.getTracks()[0];
      const published = await this.session.publish([{ track, source: source.value, label: label.value }]);
      const feed = /** @type {string} */ (published.feeds.get(track));
      this.live.set(row.key, { stream: published.id, media, feed, source: source.value, label: label.value });
      if (row.kind === "video") {
        this.stage.show({ id: feed, kind: "video", source: source.value, label: label.value }, media, true);
      }
      button.textContent = t("devices.stop");
      button.setAttribute("aria-pressed", "true");
    } catch (err) {
      const e = /** @type {any} */ (err);
      this.problem(e && e.code === "forbidden" ? t("problem.forbidden") : t("problem.no_camera"));
    } finally {
      button.disabled = false;
    }
  }

  /** The session is over: the server dropped our streams; mark every feed stopped. */
  reset() {
    for (const running of this.live.values()) {
      running.media.getTracks().forEach((tr) => tr.stop());
      this.stage.hide(running.feed);
    }
    this.live.clear();
    for (const b of this.root.querySelectorAll("button.toggle")) {
      b.textContent = t("devices.start");
      b.setAttribute("aria-pressed", "false");
    }
  }
}
