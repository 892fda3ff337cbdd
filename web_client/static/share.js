// Sharing one's screen (a report, a prior study, a slide) as a feed of its own.

import { t } from "./i18n.js";

/** @typedef {import("./protocol.js").Session} Session @typedef {import("./feeds.js").Stage} Stage */

/** The Share screen button: getDisplayMedia, published as the `screen` source. */
export class ScreenShare {
  /** @param {Session} session @param {Stage} stage @param {HTMLButtonElement} button */
  constructor(session, stage, button) {
    this.session = session;
    this.stage = stage;
    this.button = button;
    /** @type {{stream: string, feed: string, track: MediaStreamTrack} | null} */
    this.sharing = null;
    button.addEventListener("click", () => (this.sharing ? this.stop() : this.start()));
    session.addEventListener("published", (ev) => {
      const p = /** @type {CustomEvent} */ (ev).detail;
      if (this.sharing && p.previous === this.sharing.stream) this.sharing.stream = p.id;
    });
  }

  async start() {
    this.button.disabled = true;
    try {
      const media = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
      const track = media.getVideoTracks()[0];
      const published = await this.session.publish([{ track, source: "screen", label: t("share.label") }]);
      const feed = /** @type {string} */ (published.feeds.get(track));
      this.sharing = { stream: published.id, feed, track };
      // The browser's own "Stop sharing" ends the track.
      track.addEventListener("ended", () => this.stop());
      this.stage.show({ id: feed, kind: "video", source: "screen", label: t("share.label") }, media, true);
      this._show(true);
    } catch {
      // Refused or cancelled in the browser's picker: nothing is shared.
    } finally {
      this.button.disabled = false;
    }
  }

  stop() {
    const s = this.sharing;
    if (!s) return;
    this.sharing = null;
    this.session.unpublish(s.stream);
    s.track.stop();
    this.stage.hide(s.feed);
    this._show(false);
  }

  /** @param {boolean} on */
  _show(on) {
    this.button.dataset.i18n = on ? "share.stop" : "share.start";
    this.button.textContent = t(this.button.dataset.i18n);
    this.button.setAttribute("aria-pressed", String(on));
  }
}
