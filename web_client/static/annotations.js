// Draws a feed's annotations over its video, and turns the expert's gestures into operations.
// Shapes are SVG elements (data-id, data-op) placed over the picture itself, not the letterbox.

import { t } from "./i18n.js";

const SVG = "http://www.w3.org/2000/svg";
export const TOOLS = ["pointer", "arrow", "stroke", "ruler", "ellipse", "text"];

/**
 * @typedef {import("./channel.js").Op} Op
 * @typedef {{channel: import("./channel.js").ChannelState, participants: Map<string, {name: string}>,
 *            point: (feed: string, points: number[][], mediaTs?: number) => void,
 *            annotate: (op: {op: string, [key: string]: any}) => Promise<any>}} Session
 *   what an overlay draws from and sends to: a live Session, or a recording's replay
 */

/** The annotation layer of one video feed. */
export class Overlay {
  /**
   * @param {HTMLVideoElement} video
   * @param {string} feed the feed id the video shows
   * @param {Session} session
   */
  constructor(video, feed, session) {
    this.video = video;
    this.feed = feed;
    this.session = session;
    this.tool = "pointer";
    this.color = "#ffd400";
    this.enabled = false;
    /** RTP timestamp of the frame on screen, from requestVideoFrameCallback. */
    this.mediaTs = /** @type {number | undefined} */ (undefined);
    /** RTP timestamp of a frame held still on screen (freeze-frame): what drawings name. */
    this.frozenTs = /** @type {number | undefined} */ (undefined);
    /** @type {{points: number[][], el: SVGElement} | null} */
    this.drag = null;
    this.lastPointer = 0;
    this.svg = /** @type {SVGSVGElement} */ (document.createElementNS(SVG, "svg"));
    this.svg.classList.add("overlay");
    this.svg.dataset.feed = feed;
    video.after(this.svg);
    const render = () => this.render();
    this.onChange = render;
    session.channel.addEventListener("change", render);
    new ResizeObserver(render).observe(video);
    video.addEventListener("resize", render);
    video.addEventListener("loadedmetadata", render);
    this._watchFrames();
    this._listen();
    this.render();
  }

  /** Stop drawing this feed. */
  dispose() {
    this.session.channel.removeEventListener("change", this.onChange);
    this.svg.remove();
  }

  /** Allow or forbid drawing here. @param {boolean} enabled */
  setEnabled(enabled) {
    this.enabled = enabled;
    this.svg.classList.toggle("drawing", enabled);
  }

  /** The part of the element the picture fills (object-fit: contain). */
  contentBox() {
    const v = this.video;
    const w = v.clientWidth;
    const h = v.clientHeight;
    const vw = v.videoWidth || w;
    const vh = v.videoHeight || h;
    const scale = Math.min(w / vw, h / vh) || 1;
    const cw = vw * scale;
    const ch = vh * scale;
    return { left: v.offsetLeft + (w - cw) / 2, top: v.offsetTop + (h - ch) / 2, width: cw, height: ch };
  }

  /** Redraw every shape and pointer on this feed. */
  render() {
    const box = this.contentBox();
    Object.assign(this.svg.style, { left: `${box.left}px`, top: `${box.top}px`, width: `${box.width}px`, height: `${box.height}px` });
    this.svg.setAttribute("viewBox", `0 0 ${box.width} ${box.height}`);
    const keep = this.drag ? [this.drag.el] : [];
    this.svg.replaceChildren(...keep);
    for (const shape of this.session.channel.shapesOn(this.feed)) this.svg.append(draw(shape, box));
    for (const p of this.session.channel.pointers.values()) {
      if (p.feed !== this.feed || !p.points.length) continue;
      const dot = el("circle", { cx: p.points[0][0] * box.width, cy: p.points[0][1] * box.height, r: 9 });
      dot.classList.add("pointer");
      dot.dataset.author = p.author;
      const who = this.session.participants.get(p.author);
      const title = el("title", {});
      title.textContent = who ? who.name : "";
      dot.append(title);
      this.svg.append(dot);
    }
  }

  _watchFrames() {
    const v = /** @type {any} */ (this.video);
    if (!v.requestVideoFrameCallback) return;
    const tick = (/** @type {number} */ _now, /** @type {any} */ meta) => {
      if (meta && typeof meta.rtpTimestamp === "number") this.mediaTs = meta.rtpTimestamp;
      v.requestVideoFrameCallback(tick);
    };
    v.requestVideoFrameCallback(tick);
  }

  /** Where an event falls on the picture, as fractions. @param {PointerEvent} ev */
  _at(ev) {
    const r = this.svg.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width));
    const y = Math.min(1, Math.max(0, (ev.clientY - r.top) / r.height));
    return [round(x), round(y)];
  }

  _listen() {
    const svg = this.svg;
    svg.addEventListener("pointerdown", (ev) => {
      if (!this.enabled || this.tool === "pointer") return;
      svg.setPointerCapture(ev.pointerId);
      const p = this._at(ev);
      if (this.tool === "text") {
        const text = prompt(t("tools.text_prompt"));
        if (text) this._send({ op: "text", points: [p], text: text.slice(0, 200) });
        return;
      }
      this.drag = { points: [p, p], el: el("polyline", {}) };
      this.drag.el.classList.add("preview");
      svg.append(this.drag.el);
    });
    svg.addEventListener("pointermove", (ev) => {
      if (!this.enabled) return;
      const p = this._at(ev);
      if (this.tool === "pointer") {
        const now = performance.now();
        if (now - this.lastPointer >= 1000 / 60) {
          this.lastPointer = now;
          this.session.point(this.feed, [p], this.frozenTs ?? this.mediaTs);
        }
        return;
      }
      if (!this.drag) return;
      if (this.tool === "stroke") {
        if (this.drag.points.length < 500) this.drag.points.push(p);
      } else {
        this.drag.points[1] = p;
      }
      const box = this.contentBox();
      this.drag.el.setAttribute("points", this.drag.points.map(([x, y]) => `${x * box.width},${y * box.height}`).join(" "));
    });
    svg.addEventListener("pointerleave", () => {
      if (this.enabled && this.tool === "pointer") this.session.point(this.feed, []);
    });
    svg.addEventListener("pointerup", () => {
      if (!this.drag) return;
      const points = this.tool === "stroke" ? this.drag.points.slice(1) : this.drag.points;
      this.drag.el.remove();
      this.drag = null;
      if (points.length >= 2) this._send({ op: this.tool, points });
    });
  }

  /** @param {{op: string, points: number[][], text?: string}} op */
  _send(op) {
    /** @type {any} */
    const msg = { ...op, feed: this.feed, style: { color: this.color, width: 3 } };
    const ts = this.frozenTs ?? this.mediaTs;
    if (ts !== undefined) msg.media_ts = ts;
    this.session.annotate(msg).catch(() => {});
  }
}

/**
 * A ruler's length with its unit: millimetres when the feed's scale is known, else pixels of the
 * picture, else a share of the picture's diagonal. @param {{value: number, unit: string} | undefined} length
 */
export function rulerText(length) {
  if (!length) return "";
  if (length.unit === "frame") return t("ruler.frame", { pct: Math.round(length.value * 100) });
  return t(`ruler.${length.unit === "mm" ? "mm" : "px"}`, { value: length.value });
}

/** @param {number} v */
function round(v) {
  return Math.round(v * 10000) / 10000;
}

/** @param {string} name @param {Record<string, string | number>} attrs */
function el(name, attrs) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return /** @type {SVGElement} */ (node);
}

/** One shape as SVG. @param {Op} shape @param {{width: number, height: number}} box */
export function draw(shape, box) {
  const pts = (shape.points || []).map(([x, y]) => [x * box.width, y * box.height]);
  const color = (shape.style && shape.style.color) || "#ffd400";
  const width = (shape.style && shape.style.width) || 3;
  const g = el("g", { stroke: color, fill: "none", "stroke-width": width });
  g.dataset.id = shape.id;
  g.dataset.op = shape.op;
  g.dataset.author = shape.author;
  if (shape.op === "arrow") {
    const [[x0, y0], [x1, y1]] = pts;
    const a = Math.atan2(y1 - y0, x1 - x0);
    const head = 14;
    g.append(el("line", { x1: x0, y1: y0, x2: x1, y2: y1 }),
      el("polyline", { points: `${x1 - head * Math.cos(a - 0.45)},${y1 - head * Math.sin(a - 0.45)} ${x1},${y1} ${x1 - head * Math.cos(a + 0.45)},${y1 - head * Math.sin(a + 0.45)}` }));
  } else if (shape.op === "stroke") {
    g.append(el("polyline", { points: pts.map((p) => p.join(",")).join(" "), "stroke-linejoin": "round", "stroke-linecap": "round" }));
  } else if (shape.op === "ruler") {
    const [[x0, y0], [x1, y1]] = pts;
    g.append(el("line", { x1: x0, y1: y0, x2: x1, y2: y1, "stroke-dasharray": "6 4" }));
    const label = el("text", { x: (x0 + x1) / 2 + 6, y: (y0 + y1) / 2 - 6, fill: color, stroke: "none" });
    label.textContent = rulerText(shape.length);
    g.append(label);
  } else if (shape.op === "ellipse") {
    const [[x0, y0], [x1, y1]] = pts;
    g.append(el("ellipse", { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, rx: Math.abs(x1 - x0) / 2, ry: Math.abs(y1 - y0) / 2 }));
  } else if (shape.op === "text") {
    const [[x, y]] = pts;
    const label = el("text", { x, y, fill: color, stroke: "none" });
    label.textContent = shape.text || "";
    g.append(label);
  }
  return g;
}
