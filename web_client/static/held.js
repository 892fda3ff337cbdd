// A frame held up for everyone: whoever may draw holds up the frame it froze; every page shows
// it on that feed's tile, the live picture in a corner, until its author or a moderator
// releases it (docs/protocol.md, "hold_frame").

import { t } from "./i18n.js";

/**
 * @typedef {import("./protocol.js").Session} Session
 * @typedef {import("./feeds.js").Stage} Stage
 * @typedef {import("./notices.js").Notices} Notices
 * @typedef {import("./viewer.js").TileView} TileView
 */

// Tried in turn until the picture fits the server's limit: a sharp frame first.
const QUALITIES = [0.92, 0.8, 0.6];
const SCALES = [1, 0.5, 0.25];

/**
 * Show the held frame on every page and let those who may draw hold one up.
 * @param {Session} session @param {Stage} stage @param {Notices} notices
 * @param {() => boolean} mayHold whether this participant may hold frames up now
 */
export function mountHeldFrames(session, stage, notices, mayHold) {
  /** @type {{id: string, image: HTMLImageElement} | null} the held frame, decoded */
  let decoded = null;
  // A held frame this page went back to the live picture from: not shown again on it.
  let dismissed = "";

  /** @param {TileView} tile @param {string} feed */
  function wire(tile, feed) {
    if (tile.onHold) return;
    tile.onHold = () => {
      if (tile.heldId) session.releaseFrame().catch(() => {});
      else holdUp(tile, feed);
    };
    tile.onUnfreeze = (heldId) => {
      // Its author going back to live takes it down for everyone; anyone else, only here.
      if (heldId && session.held?.id === heldId && session.held.author === session.me) {
        session.releaseFrame().catch(() => {});
      } else if (heldId) {
        dismissed = heldId;
      }
      buttons();
    };
    tile.changed = buttons;
  }

  /** @param {TileView} tile @param {string} feed */
  async function holdUp(tile, feed) {
    const still = tile.still();
    if (!still) return;
    const limit = Number(session.welcome?.limits?.max_held_frame) || 786432;
    try {
      const image = await jpeg(still, limit - 1024);
      await session.holdFrame(feed, image, tile.overlay.frozenTs);
    } catch {
      notices.show("held-failed", "notice.held_failed");
    }
  }

  async function apply() {
    const held = session.held;
    for (const view of stage.views.values()) {
      if (view.tile && view.tile.heldId && view.tile.heldId !== held?.id) view.tile.endHeld(view.tile.heldId);
    }
    if (held && decoded?.id !== held.id) {
      const image = new Image();
      image.src = `data:image/jpeg;base64,${held.image}`;
      try {
        await image.decode();
      } catch {
        return;
      }
      if (session.held?.id !== held.id) return; // replaced or released meanwhile
      decoded = { id: held.id, image };
    }
    const view = held ? stage.views.get(held.feed) : undefined;
    if (held && decoded && view?.tile && view.tile.heldId !== held.id && dismissed !== held.id) {
      view.tile.showHeld(held.id, decoded.image, held.media_ts);
      stage.spotlight(held.feed);
    }
    buttons();
  }

  /** The hold button of each tile: on a frozen frame, for those who may hold it up or take it down. */
  function buttons() {
    const held = session.held;
    const mine = held && (held.author === session.me || session.role === "moderator");
    for (const [feed, view] of stage.views) {
      const tile = view.tile;
      if (!tile) continue; // an operator's own preview too: it shows what the expert holds up
      wire(tile, feed);
      const shown = Boolean(tile.heldId);
      tile.holdButton.hidden = !tile.still() || (shown ? !mine : !mayHold());
      const key = shown ? "view.release" : "view.hold";
      tile.holdButton.setAttribute("aria-pressed", String(shown));
      tile.holdButton.dataset.i18nTitle = key;
      tile.holdButton.dataset.i18nLabel = key;
      tile.holdButton.title = t(key);
      tile.holdButton.setAttribute("aria-label", t(key));
    }
  }

  session.addEventListener("held", (ev) => {
    const held = /** @type {CustomEvent} */ (ev).detail;
    if (held) {
      const who = session.participants.get(held.author);
      const key = held.author === session.me ? "notice.held_mine" : "notice.held";
      notices.show("held", key, { name: who ? who.name : "" });
    } else {
      notices.show("held", "notice.released");
    }
    apply();
  });
  stage.addEventListener("change", () => apply());
  session.addEventListener("message", () => buttons());
}

/**
 * A canvas as a JPEG in base64 of at most `limit` characters (smaller, then coarser, if need be).
 * @param {HTMLCanvasElement} canvas @param {number} limit @returns {Promise<string>}
 */
async function jpeg(canvas, limit) {
  for (const scale of SCALES) {
    const source = scale === 1 ? canvas : scaled(canvas, scale);
    for (const quality of QUALITIES) {
      const blob = await new Promise((resolve) => source.toBlob(resolve, "image/jpeg", quality));
      if (!blob) continue;
      const text = await base64(/** @type {Blob} */ (blob));
      if (text.length <= limit) return text;
    }
  }
  throw new Error("the frame is too large to hold up");
}

/** @param {HTMLCanvasElement} canvas @param {number} scale */
function scaled(canvas, scale) {
  const out = document.createElement("canvas");
  out.width = Math.max(1, Math.round(canvas.width * scale));
  out.height = Math.max(1, Math.round(canvas.height * scale));
  /** @type {CanvasRenderingContext2D} */ (out.getContext("2d")).drawImage(canvas, 0, 0, out.width, out.height);
  return out;
}

/** @param {Blob} blob @returns {Promise<string>} */
function base64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}
