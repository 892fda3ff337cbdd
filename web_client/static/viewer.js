// How one video tile is looked at: fullscreen, zoom and pan, and freeze-frame (the current
// frame held still to draw and measure on, the live picture going on in a corner; or a frame
// someone held up for everyone).

import { t } from "./i18n.js";

/** @typedef {import("./annotations.js").Overlay} Overlay */

const MAX_ZOOM = 8;
// Drawn, not typed: symbol fonts differ from one machine to the next, and a missing one shows a box.
const ICONS = {
  whole: "M3 5h18v14H3zM5 7v10h14V7z",
  freeze: "M6 4h4v16H6zM14 4h4v16h-4z",
  fullscreen: "M3 3h7v2H5v5H3zM14 3h7v7h-2V5h-5zM3 14h2v5h5v2H3zM19 14h2v7h-7v-2h5z",
  // A frame with rays: shown to everyone.
  hold: "M6 7h12v10H6zM8 9v6h8V9zM1 11h3v2H1zM20 11h3v2h-3zM11 1h2v3h-2zM11 20h2v3h-2z",
};
const STEP = 1.25;

/** The controls and state of one video tile. */
export class TileView {
  /**
   * @param {HTMLElement} figure the tile @param {HTMLElement} zoom the element scaled (the video
   * and its overlay) @param {HTMLVideoElement} video @param {Overlay} overlay
   * @param {HTMLElement} caption where the tile's buttons go
   */
  constructor(figure, zoom, video, overlay, caption) {
    this.figure = figure;
    this.zoom = zoom;
    this.video = video;
    this.overlay = overlay;
    this.scale = 1;
    this.x = 0;
    this.y = 0;
    /** @type {{canvas: HTMLCanvasElement, live: HTMLVideoElement} | null} */
    this.frozen = null;
    /** The id of the frame held up for everyone this tile shows ("" if none). */
    this.heldId = "";
    /** Called when the hold button is pressed (set by whoever may hold frames up). @type {(() => void) | null} */
    this.onHold = null;
    /** Called when this page goes back to the live picture. @type {((heldId: string) => void) | null} */
    this.onUnfreeze = null;
    /** Called whenever the tile freezes or goes live. @type {(() => void) | null} */
    this.changed = null;
    /** @type {{x: number, y: number, px: number, py: number} | null} a pan under way */
    this.drag = null;
    const buttons = [
      button("view.zoom_in", "+", () => this.zoomBy(STEP)),
      button("view.zoom_out", "−", () => this.zoomBy(1 / STEP)),
      button("view.zoom_reset", ICONS.whole, () => this.reset()),
      button("view.freeze", ICONS.freeze, () => this.toggleFreeze(), "freeze"),
      button("view.fullscreen", ICONS.fullscreen, () => this.fullscreen()),
      button("view.hold", ICONS.hold, () => this.onHold?.(), "hold"),
    ];
    caption.append(...buttons);
    this.freezeButton = /** @type {HTMLButtonElement} */ (buttons[3]);
    this.holdButton = /** @type {HTMLButtonElement} */ (buttons[5]);
    this.holdButton.hidden = true;
    figure.addEventListener("wheel", (ev) => {
      if (!ev.ctrlKey) return; // a plain wheel scrolls the page; Ctrl+wheel (and a pinch) zooms
      ev.preventDefault();
      this.zoomBy(ev.deltaY < 0 ? STEP : 1 / STEP, ev);
    }, { passive: false });
    // Dragging pans a zoomed picture: with the middle button, with Shift held, or wherever
    // nothing is being drawn.
    zoom.addEventListener("pointerdown", (ev) => {
      const drawing = this.overlay.enabled && this.overlay.tool !== "pointer";
      if (this.scale === 1 || (drawing && ev.button !== 1 && !ev.shiftKey)) return;
      ev.preventDefault();
      ev.stopPropagation();
      zoom.setPointerCapture(ev.pointerId);
      this.drag = { x: this.x, y: this.y, px: ev.clientX, py: ev.clientY };
    }, { capture: true });
    zoom.addEventListener("pointermove", (ev) => {
      if (!this.drag) return;
      this.x = this.drag.x + (ev.clientX - this.drag.px) / this.scale;
      this.y = this.drag.y + (ev.clientY - this.drag.py) / this.scale;
      this._apply();
    });
    for (const name of ["pointerup", "pointercancel"]) zoom.addEventListener(name, () => (this.drag = null));
    new ResizeObserver(() => this._place()).observe(video);
  }

  /**
   * Zoom in or out, keeping the point under the cursor (or the middle) where it is.
   * @param {number} factor @param {{clientX: number, clientY: number}} [at]
   */
  zoomBy(factor, at) {
    const scale = Math.min(MAX_ZOOM, Math.max(1, this.scale * factor));
    if (at) {
      const r = this.figure.getBoundingClientRect();
      // The point under the cursor, in the picture's unscaled coordinates from its centre.
      const cx = (at.clientX - r.left - r.width / 2) / this.scale - this.x;
      const cy = (at.clientY - r.top - r.height / 2) / this.scale - this.y;
      this.x += cx * (this.scale / scale - 1);
      this.y += cy * (this.scale / scale - 1);
    }
    this.scale = scale;
    if (scale === 1) this.x = this.y = 0;
    this._apply();
  }

  /** Pan by pixels of the screen. @param {number} dx @param {number} dy */
  pan(dx, dy) {
    if (this.scale === 1) return;
    this.x += dx / this.scale;
    this.y += dy / this.scale;
    this._apply();
  }

  /** Back to the whole picture. */
  reset() {
    this.scale = 1;
    this.x = this.y = 0;
    this._apply();
  }

  _apply() {
    // Never further than the picture's edge.
    const w = this.zoom.clientWidth / 2;
    const h = this.zoom.clientHeight / 2;
    const limitX = w - w / this.scale;
    const limitY = h - h / this.scale;
    this.x = Math.max(-limitX, Math.min(limitX, this.x));
    this.y = Math.max(-limitY, Math.min(limitY, this.y));
    this.zoom.style.transform = this.scale === 1 ? "" : `scale(${this.scale}) translate(${this.x}px, ${this.y}px)`;
    this.figure.dataset.zoom = String(Math.round(this.scale * 100) / 100);
  }

  /** Show the tile alone on the screen, or come back. */
  fullscreen() {
    if (document.fullscreenElement === this.figure) document.exitFullscreen().catch(() => {});
    else this.figure.requestFullscreen().catch(() => {});
  }

  /** Hold the frame on screen (to draw and measure on it), or go back to the live picture. */
  toggleFreeze() {
    if (this.frozen) this.unfreeze();
    else this.freeze();
  }

  /** Hold the current frame; drawings made on it are anchored to it. */
  freeze() {
    const v = this.video;
    if (this.frozen || !v.videoWidth) return;
    this._still(v, v.videoWidth, v.videoHeight, this.overlay.mediaTs);
  }

  /**
   * Show a frame someone held up for everyone, in place of the live picture (or of a frame
   * frozen here). @param {string} id @param {HTMLImageElement} image decoded @param {number} [mediaTs]
   */
  showHeld(id, image, mediaTs) {
    this._still(image, image.naturalWidth, image.naturalHeight, mediaTs);
    this.heldId = id;
    this.figure.dataset.held = id;
    this.figure.classList.add("is-held");
  }

  /** The frame held up for everyone is released: back to the live picture if this tile shows it. @param {string} id */
  endHeld(id) {
    if (this.heldId === id) this.unfreeze(false);
  }

  /**
   * Draw a still picture over the live one. @param {CanvasImageSource} picture
   * @param {number} width @param {number} height @param {number} [mediaTs]
   */
  _still(picture, width, height, mediaTs) {
    if (!this.frozen) {
      const v = this.video;
      const canvas = document.createElement("canvas");
      canvas.className = "frozen";
      v.after(canvas);
      const live = document.createElement("video");
      live.className = "live-corner";
      live.muted = true;
      live.autoplay = true;
      live.setAttribute("playsinline", "");
      live.srcObject = v.srcObject;
      live.title = t("view.live");
      live.addEventListener("click", () => this.unfreeze());
      this.figure.append(live);
      this.frozen = { canvas, live };
      this.figure.classList.add("is-frozen");
      this.freezeButton.setAttribute("aria-pressed", "true");
    }
    // A frame held up by someone may replace one frozen here: the same canvas takes it.
    const canvas = this.frozen.canvas;
    canvas.width = width;
    canvas.height = height;
    /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d")).drawImage(picture, 0, 0, width, height);
    // The frame's own time: whatever is drawn on it names this frame, not the live one.
    canvas.dataset.mediaTs = String(mediaTs ?? "");
    this.overlay.frozenTs = mediaTs;
    this._place();
    this.overlay.render();
    this.changed?.();
  }

  /** Back to the live picture. @param {boolean} [asked] by this page's user (not a release) */
  unfreeze(asked = true) {
    if (!this.frozen) return;
    this.frozen.canvas.remove();
    this.frozen.live.remove();
    this.frozen = null;
    this.overlay.frozenTs = undefined;
    const held = this.heldId;
    this.heldId = "";
    delete this.figure.dataset.held;
    this.figure.classList.remove("is-frozen", "is-held");
    this.freezeButton.setAttribute("aria-pressed", "false");
    if (asked) this.onUnfreeze?.(held);
    this.changed?.();
  }

  /** The frame frozen here, for holding it up. @returns {HTMLCanvasElement | null} */
  still() {
    return this.frozen ? this.frozen.canvas : null;
  }

  /** Lay the held frame exactly over the picture. */
  _place() {
    if (!this.frozen) return;
    const box = this.overlay.contentBox();
    Object.assign(this.frozen.canvas.style, { left: `${box.left}px`, top: `${box.top}px`, width: `${box.width}px`, height: `${box.height}px` });
  }

  /** Take the tile's controls away. */
  dispose() {
    this.unfreeze(false);
    if (document.fullscreenElement === this.figure) document.exitFullscreen().catch(() => {});
  }
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * A caption button with a symbol (a character, or an SVG path) and a translated name.
 * @param {string} key @param {string} symbol @param {() => void} action @param {string} [name]
 */
function button(key, symbol, action, name = key.split(".")[1]) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "tile-action";
  b.dataset.action = name;
  b.dataset.i18nTitle = key;
  b.dataset.i18nLabel = key;
  b.title = t(key);
  b.setAttribute("aria-label", t(key));
  if (symbol.startsWith("M")) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.classList.add("icon");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", symbol);
    path.setAttribute("fill-rule", "evenodd");
    svg.append(path);
    b.append(svg);
  } else {
    b.textContent = symbol;
  }
  b.addEventListener("click", action);
  return b;
}
