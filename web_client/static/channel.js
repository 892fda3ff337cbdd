// The annotation channel's state in the browser: no DOM. It applies the server's snapshot,
// resume and live events (docs/protocol.md, "The annotation channel").

/**
 * @typedef {{type: string, seq: number, author: string, op: string, id: string, feed?: string,
 *            points?: number[][], text?: string, target?: string, removed?: string[],
 *            raised?: boolean, length?: {value: number, unit: string},
 *            style?: {color?: string, width?: number}, media_ts?: number, server_ts: number}} Op
 * @typedef {{type: string, author: string, feed?: string, points: number[][], server_ts?: number}} Pointer
 */

/** What a "change" event carries when only pointers moved. */
export const POINTER = Object.freeze({ op: "pointer" });

/** Live annotations, pointers, chat and raised hands, kept in sequence order. */
export class ChannelState extends EventTarget {
  constructor() {
    super();
    this.seq = 0;
    /** @type {Map<string, Op>} live shapes by id */
    this.shapes = new Map();
    /** @type {Map<string, Pointer>} the last pointer of each author */
    this.pointers = new Map();
    /** @type {Op[]} */
    this.chat = [];
    /** @type {Map<string, number>} raised hands: author → since */
    this.hands = new Map();
  }

  /** Take the `channel` of a welcome or admitted message. @param {any} channel */
  load(channel) {
    if (channel.mode === "snapshot") {
      this.shapes = new Map(channel.annotations.map((/** @type {Op} */ s) => [s.id, s]));
      this.chat = [...channel.chat];
      this.hands = new Map(channel.hands.map((/** @type {{author: string, since: number}} */ h) => [h.author, h.since]));
      this.seq = channel.seq;
    } else {
      for (const op of channel.ops) this.apply(op);
    }
    this.pointers = new Map(channel.pointers.map((/** @type {Pointer} */ p) => [p.author, p]));
    this._changed();
  }

  /** Apply one ordered operation; ignores what was already applied. @param {Op} op */
  apply(op) {
    if (op.seq <= this.seq) return;
    this.seq = op.seq;
    switch (op.op) {
      case "arrow":
      case "stroke":
      case "ruler":
      case "ellipse":
      case "text":
        this.shapes.set(op.id, op);
        break;
      case "delete":
      case "undo":
        if (op.target) this.shapes.delete(op.target);
        break;
      case "clear":
        for (const id of op.removed || []) this.shapes.delete(id);
        break;
      case "chat":
        this.chat.push(op);
        if (this.chat.length > 500) this.chat.shift();
        break;
      case "hand":
        if (op.raised) this.hands.set(op.author, op.server_ts);
        else this.hands.delete(op.author);
        break;
    }
    this._changed(op);
  }

  /** Take a pointer event. @param {Pointer} pointer */
  point(pointer) {
    if (pointer.points.length) this.pointers.set(pointer.author, pointer);
    else this.pointers.delete(pointer.author);
    this._changed(POINTER);
  }

  /** Drop a departed participant's pointer. @param {string} author */
  forget(author) {
    if (this.pointers.delete(author)) this._changed(POINTER);
  }

  /** The live shapes drawn on one feed, oldest first. @param {string} feed */
  shapesOn(feed) {
    return [...this.shapes.values()].filter((s) => s.feed === feed).sort((a, b) => a.seq - b.seq);
  }

  /**
   * Tell listeners what changed: an operation, POINTER for pointers only, nothing for everything.
   * @param {Op | typeof POINTER} [op]
   */
  _changed(op) {
    this.dispatchEvent(new CustomEvent("change", { detail: op }));
  }
}
