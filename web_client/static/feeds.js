// The stage: every received feed (and the operator's own previews), spotlight or grid, each
// with its annotation overlay. In a conference (more cameras than the strip holds) the patient
// feeds and the operator's camera are always shown, the cameras of those who spoke last fill
// the strip, and the rest are names: their pictures are paused on the server until needed.

import { Overlay } from "./annotations.js";
import { t } from "./i18n.js";
import { TileView } from "./viewer.js";

// Cameras shown beside the patient feeds: enough to see who talks, few enough that a conference
// of fifteen does not send fifteen pictures to every page.
export const STRIP = 4;

/**
 * @typedef {import("./protocol.js").Session} Session
 * @typedef {{figure: HTMLElement, overlay: Overlay | null, media: HTMLMediaElement, source: string,
 *            participant: string, tile: TileView | null}} View one shown feed, whose it is, and how it is looked at
 */

/** Shows feeds on the stage and keeps one Overlay per video feed. */
export class Stage extends EventTarget {
  /** @param {Session} session @param {HTMLElement} root */
  constructor(session, root) {
    super();
    this.session = session;
    this.root = root;
    // A subscription made again after a network change: the same feeds, new tracks.
    session.addEventListener("subscribed", (ev) => this._renew(/** @type {CustomEvent} */ (ev).detail));
    /** @type {Map<string, View>} feed id → view */
    this.views = new Map();
    /** @type {Map<string, {subscription: string, feeds: string[], pc: RTCPeerConnection | null, participant: string}>} stream id → subscription */
    this.streams = new Map();
    this.main = "";
    // A received picture nobody can see (its tile out of view, the page hidden) is paused on the
    // server, so that it costs neither the network nor this device; shown again, it resumes.
    /** @type {Set<string>} feed ids whose tile is on screen */
    this.onScreen = new Set();
    /** @type {Set<string>} feed ids paused on the server */
    this.paused = new Set();
    /** @type {string[]} participants by when they last started speaking, the latest first */
    this.recent = [];
    /** @type {Set<string>} camera feeds set aside as names (a conference with more cameras than the strip) */
    this.aside = new Set();
    session.addEventListener("speaking", () => this._heard());
    this.watcher = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const feed = /** @type {HTMLElement} */ (e.target).dataset.feed || "";
        if (e.isIntersecting) this.onScreen.add(feed);
        else this.onScreen.delete(feed);
      }
      this._pauseUnseen();
    });
    document.addEventListener("visibilitychange", () => this._pauseUnseen());
  }

  /** Pause on the server the received video feeds nobody can see; resume those seen again. */
  _pauseUnseen() {
    const visible = document.visibilityState === "visible";
    for (const entry of this.streams.values()) {
      if (!entry.subscription) continue;
      for (const feed of entry.feeds) {
        const view = this.views.get(feed);
        if (!view || !view.overlay || view.figure.classList.contains("local")) continue; // video received only
        const hidden = !visible || !this.onScreen.has(feed) || this.aside.has(feed);
        if (hidden === this.paused.has(feed)) continue;
        if (hidden) this.paused.add(feed);
        else this.paused.delete(feed);
        this.session.pause(entry.subscription, hidden, [feed]);
      }
    }
  }

  /** Receive a published stream and show its feeds. @param {any} stream */
  async receive(stream) {
    if (this.streams.has(stream.id) || stream.participant_id === this.session.me) return;
    this.streams.set(stream.id, { subscription: "", feeds: [], pc: null, participant: stream.participant_id });
    try {
      const sub = await this.session.subscribe(stream.id);
      this.streams.set(stream.id, { subscription: sub.id, feeds: stream.feeds.map((/** @type {any} */ f) => f.id), pc: sub.pc, participant: stream.participant_id });
      for (const feed of stream.feeds) {
        const track = sub.tracks.get(feed.id);
        if (track) this.show(feed, new MediaStream([track]), false, stream.participant_id);
      }
      this.mark(stream.id, stream.state || "live");
    } catch {
      this.streams.delete(stream.id);
    }
  }

  /** Make the stage match the streams a welcome lists (after a reconnect, some may be gone). @param {any[]} streams */
  reconcile(streams) {
    const live = new Set(streams.map((s) => s.id));
    for (const id of [...this.streams.keys()]) if (!live.has(id)) this.drop(id);
    for (const s of streams) {
      if (this.streams.has(s.id)) this.mark(s.id, s.state || "live");
      else this.receive(s);
    }
  }

  /**
   * Show a stream as live or as reconnecting (its publisher's network dropped; the picture
   * pauses, and the tile stays). @param {string} streamId @param {string} state
   */
  mark(streamId, state) {
    const entry = this.streams.get(streamId);
    if (!entry) return;
    for (const feed of entry.feeds) {
      const view = this.views.get(feed);
      if (!view) continue;
      view.figure.classList.toggle("reconnecting", state === "reconnecting");
      view.figure.dataset.state = state;
    }
  }

  /** Put a subscription's new tracks into the views of its feeds. @param {any} sub */
  _renew(sub) {
    const entry = this.streams.get(sub.of);
    if (!entry) return;
    entry.subscription = sub.id;
    entry.pc = sub.pc;
    // A new subscription starts unpaused: pause again what is still not seen.
    for (const feed of entry.feeds) this.paused.delete(feed);
    queueMicrotask(() => this._pauseUnseen());
    for (const feed of entry.feeds) {
      const view = this.views.get(feed);
      const track = sub.tracks.get(feed);
      if (view && track) view.media.srcObject = new MediaStream([track]);
    }
    this.dispatchEvent(new CustomEvent("change"));
  }

  /** Stop showing a stream's feeds. @param {string} streamId */
  drop(streamId) {
    const entry = this.streams.get(streamId);
    if (!entry) return;
    for (const feed of entry.feeds) this.hide(feed);
    this.streams.delete(streamId);
  }

  /** Drop everything received (the connection was lost; it will be received again). */
  dropAll() {
    for (const id of [...this.streams.keys()]) this.drop(id);
  }

  /**
   * Show one feed. @param {{id: string, kind: string, source: string, label: string}} feed
   * @param {MediaStream} media @param {boolean} local the operator's own preview
   * @param {string} [participant] whose feed it is (this page's own when local)
   */
  show(feed, media, local, participant = this.session.me) {
    this.hide(feed.id);
    const el = /** @type {HTMLMediaElement} */ (document.createElement(feed.kind === "video" ? "video" : "audio"));
    el.autoplay = true;
    el.setAttribute("playsinline", "");
    el.srcObject = media;
    el.dataset.feed = feed.id;
    el.dataset.source = feed.source;
    if (feed.kind === "audio") {
      this.root.append(el);
      this.views.set(feed.id, { figure: el, overlay: null, media: el, source: feed.source, participant, tile: null });
      this.dispatchEvent(new CustomEvent("change"));
      return;
    }
    el.muted = true; // the picture never carries sound; autoplay policies allow muted video
    const figure = document.createElement("figure");
    figure.dataset.feed = feed.id;
    figure.classList.toggle("local", local);
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.textContent = feed.label || t(`source.${feed.source}`);
    const pause = document.createElement("em");
    pause.className = "paused";
    pause.dataset.i18n = "stream.reconnecting";
    pause.textContent = t("stream.reconnecting");
    const swap = document.createElement("button");
    swap.type = "button";
    swap.dataset.i18n = "swap";
    swap.textContent = t("swap");
    swap.addEventListener("click", () => this.spotlight(feed.id));
    caption.append(label, pause, swap);
    // The picture and its drawings sit in one element, so that zoom and pan move them together.
    const zoom = document.createElement("div");
    zoom.className = "zoom";
    zoom.append(el);
    figure.append(zoom, caption);
    this.root.append(figure);
    const overlay = new Overlay(/** @type {HTMLVideoElement} */ (el), feed.id, this.session);
    const tile = new TileView(figure, zoom, /** @type {HTMLVideoElement} */ (el), overlay, caption);
    figure.dataset.participant = participant;
    this.views.set(feed.id, { figure, overlay, media: el, source: feed.source, participant, tile });
    if (!local) this.watcher.observe(figure);
    if (!this.main || (isPatientSource(feed.source) && !isPatientSource(this.views.get(this.main)?.source || ""))) {
      this.spotlight(feed.id);
    } else {
      this._arrange();
    }
    this.dispatchEvent(new CustomEvent("change"));
  }

  /** Stop showing one feed. @param {string} feedId */
  hide(feedId) {
    const view = this.views.get(feedId);
    if (!view) return;
    if (view.overlay) view.overlay.dispose();
    view.tile?.dispose();
    this.watcher.unobserve(view.figure);
    view.figure.remove();
    this.views.delete(feedId);
    this.onScreen.delete(feedId);
    this.paused.delete(feedId);
    if (this.main === feedId) {
      this.main = "";
      const next = [...this.views.entries()].find(([, v]) => v.overlay);
      if (next) this.spotlight(next[0]);
    }
    this._arrange();
    this.dispatchEvent(new CustomEvent("change"));
  }

  /** Make a feed the large one (the others become picture-in-picture thumbnails). @param {string} feedId */
  spotlight(feedId) {
    this.main = feedId;
    this._arrange();
  }

  /** @param {string} layout "spotlight" or "grid" */
  setLayout(layout) {
    this.root.dataset.layout = layout;
    this._arrange();
  }

  /** How the main feed is looked at (zoom, freeze, fullscreen), if one is shown. */
  mainTile() {
    return this.views.get(this.main)?.tile || null;
  }

  /** The overlays of every shown video feed. */
  overlays() {
    return [...this.views.values()].flatMap((v) => (v.overlay ? [v.overlay] : []));
  }

  /** Every subscription's connection. */
  connections() {
    return [...this.streams.values()].flatMap((s) => (s.pc ? [s.pc] : []));
  }

  /** The subscription showing the main feed, for its health. */
  mainConnection() {
    for (const s of this.streams.values()) if (s.feeds.includes(this.main)) return s.pc;
    return null;
  }

  /** Keep those who spoke last in the strip: a new speaker comes in, the longest quiet goes. */
  _heard() {
    const shown = new Set(this.recent.slice(0, STRIP));
    const now = [...this.session.speaking.keys()].filter((who) => !shown.has(who));
    if (!now.length) return;
    this.recent = [...now, ...this.recent.filter((who) => !now.includes(who))];
    this._arrange();
  }

  /** The camera feeds shown as names only: beyond the strip, the longest quiet first. */
  _setAside() {
    /** @type {string[]} */
    const cameras = [];
    for (const [id, view] of this.views) {
      if (!view.overlay || view.figure.classList.contains("local") || id === this.main) continue;
      if (isPatientSource(view.source)) continue;
      if (this.session.participants.get(view.participant)?.role === "operator") continue;
      cameras.push(id);
    }
    if (cameras.length <= STRIP) return new Set();
    const rank = (/** @type {string} */ id) => {
      const i = this.recent.indexOf(this.views.get(id)?.participant || "");
      return i < 0 ? Infinity : i;
    };
    cameras.sort((a, b) => rank(a) - rank(b));
    return new Set(cameras.slice(STRIP));
  }

  _arrange() {
    const spotlight = this.root.dataset.layout === "spotlight";
    this.aside = this._setAside();
    for (const [id, view] of this.views) {
      if (!view.overlay) continue;
      view.figure.classList.toggle("main", spotlight && id === this.main);
      view.figure.classList.toggle("thumb", spotlight && id !== this.main);
      view.figure.classList.toggle("aside", this.aside.has(id));
      if (spotlight && id === this.main) this.root.prepend(view.figure);
    }
    this._names();
    this._pauseUnseen();
    for (const o of this.overlays()) o.render();
    const empty = !this.overlays().length;
    const none = document.getElementById("nofeeds");
    if (none) none.hidden = !empty;
  }

  /** List the cameras set aside by name; choosing one makes it the large picture. */
  _names() {
    let list = /** @type {HTMLElement | null} */ (this.root.querySelector(".names"));
    if (!this.aside.size) {
      list?.remove();
      return;
    }
    if (!list) {
      list = document.createElement("p");
      list.className = "names";
    }
    this.root.append(list); // last, after the strip
    list.replaceChildren(
      ...[...this.aside].map((id) => {
        const view = /** @type {View} */ (this.views.get(id));
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.feed = id;
        b.textContent = this.session.participants.get(view.participant)?.name || t(`source.${view.source}`);
        b.title = t("swap");
        b.addEventListener("click", () => this.spotlight(id));
        return b;
      }),
    );
  }
}

/** @param {string} source */
function isPatientSource(source) {
  return source === "probe" || source === "laparoscope";
}
