// The moderator's view of every media connection in the room, from the server's `get_stats`:
// who sends what (and in which simulcast layers), who receives which layer, over what link.

import { t } from "./i18n.js";

/** @typedef {import("./protocol.js").Session} Session */

// Often enough to follow a viewer going down and up a layer; the answer is a few hundred bytes
// a connection, asked only while the panel is open and the page seen.
const EVERY_MS = 2000;

/** @param {number | null | undefined} bps */
const kbps = (bps) => (bps == null ? "—" : String(Math.round(bps / 1000)));

/**
 * One line per sent feed and per received copy, for a moderator.
 * @param {Session} session @param {HTMLElement} box the panel (a <details>) @param {HTMLElement} table
 */
export function mountConnections(session, box, table) {
  /** @type {Map<string, string>} video feed id → its label */
  const labels = new Map();
  /** @param {any} stream */
  const learn = (stream) => {
    for (const f of stream.feeds || []) {
      if (f.kind === "video") labels.set(f.id, f.label || t(`source.${f.source}`));
    }
  };
  session.addEventListener("message", (ev) => {
    const msg = /** @type {CustomEvent} */ (ev).detail;
    if ((msg.type === "welcome" || msg.type === "admitted") && msg.streams) msg.streams.forEach(learn);
    if (msg.type === "stream_added") learn(msg.stream);
  });
  /** @param {string} id */
  const who = (id) => session.participants.get(id)?.name || id;

  /** @param {string[]} cells @param {string} [kind] a connection's row, else the heading */
  const row = (cells, kind) => {
    const tr = document.createElement("tr");
    if (kind) tr.dataset.kind = kind;
    for (const text of cells) {
      const td = document.createElement(kind ? "td" : "th");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  };

  /** @type {Map<string, {bytes: number, at: number}>} connection → its byte count last time */
  const seen = new Map();
  /** What flowed since the last answer, in kbit/s ("—" the first time). @param {string} key @param {number} bytes @param {number} at */
  const flowing = (key, bytes, at) => {
    const before = seen.get(key);
    seen.set(key, { bytes, at });
    if (!before || at <= before.at || bytes < before.bytes) return "—";
    return kbps((8000 * (bytes - before.bytes)) / (at - before.at));
  };

  /** @param {any} stats */
  const render = (stats) => {
    const at = performance.now();
    const head = row([t("links.who"), t("links.feed"), t("links.layer"), t("links.rate"),
      t("links.link"), t("links.loss"), t("links.rtt")]);
    const lines = [head];
    for (const up of stats.up.filter((/** @type {any} */ u) => u.kind === "video")) {
      const layers = up.layers.filter((/** @type {any} */ x) => x.live)
        .map((/** @type {any} */ x) => `${x.rid} ${kbps(x.bitrate)}`).join(" · ");
      const loss = up.expected ? `${Math.round((1000 * up.lost) / up.expected) / 10}%` : "—";
      const tr = row([`${who(up.participant_id)} ↑`, labels.get(up.feed) || up.feed,
        layers || "—", flowing(`up:${up.feed}`, up.bytes, at), kbps(up.upstream_bitrate), loss, "—"], "up");
      tr.dataset.feed = up.feed;
      lines.push(tr);
    }
    for (const d of stats.down.filter((/** @type {any} */ x) => labels.has(x.feed))) {
      const state = d.paused ? t("links.paused") : d.waiting_keyframe ? t("links.waiting") : "";
      const layer = d.layer ? (d.target_layer && d.target_layer !== d.layer ? `${d.layer} → ${d.target_layer}` : d.layer) : "—";
      const tr = row([`${who(d.subscriber_id)} ↓`, labels.get(d.feed) || d.feed, state || layer,
        flowing(`down:${d.stream}`, d.bytes, at), kbps(d.estimate ?? d.remb), d.loss == null ? "—" : `${Math.round(d.loss * 1000) / 10}%`,
        d.rtt == null ? "—" : `${Math.round(d.rtt * 1000)}`], "down");
      tr.dataset.feed = d.feed;
      tr.dataset.layer = d.layer || "";
      lines.push(tr);
    }
    table.replaceChildren(...lines);
  };

  let busy = false;
  setInterval(async () => {
    const open = /** @type {HTMLDetailsElement} */ (box).open;
    if (busy || !open || document.hidden || session.role !== "moderator" || session.state !== "joined") return;
    busy = true;
    try {
      render(await session.request({ type: "get_stats" }));
    } catch {
      // A reconnect or a role taken away meanwhile: the next round asks again.
    } finally {
      busy = false;
    }
  }, EVERY_MS);
}
