// Replays a recorded session: every video side by side and every voice, in step on one session
// clock, with the annotations drawn over the frames they were made on, and the chat beside.

import { Overlay } from "./annotations.js";
import { ChannelState } from "./channel.js";
import { LANGUAGES, pickLanguage, setLanguage, t } from "./i18n.js";
import { tabToken } from "./tab.js";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
// Kept for this tab only, so that a reload keeps the library open; never in the address bar.
const token = tabToken();
const params = new URLSearchParams(location.hash.slice(1));

await setLanguage(pickLanguage());
const lang = /** @type {HTMLSelectElement} */ ($("lang"));
for (const [code, name] of Object.entries(LANGUAGES)) lang.append(new Option(name, code));
lang.value = pickLanguage();
lang.addEventListener("change", () => setLanguage(lang.value));

/** @param {string} path */
async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error((await r.json()).error?.code || String(r.status));
  return r.json();
}

/** @param {number} s */
function clock(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

/** A replay of the channel: the state at the session time the player is at. */
class Replay {
  /** @param {any[]} log entries of channel.jsonl, each with `t` */
  constructor(log) {
    this.log = log;
    this.channel = new ChannelState();
    /** @type {Map<string, {name: string, role: string}>} */
    this.participants = new Map();
    this.next = 0;
    this.at = 0;
    /** @type {any} the frame held up for everyone at this time (its log entry), if any */
    this.held = null;
  }

  /** Bring the state to session time `time`, replaying from the start after a seek back. @param {number} time */
  seek(time) {
    if (time < this.at) {
      this.channel = new ChannelState();
      this.next = 0;
      this.held = null;
      this.onReset();
    }
    this.at = time;
    let changed = false;
    while (this.next < this.log.length && this.log[this.next].t <= time) {
      const e = this.log[this.next++];
      if (e.type === "op") this.channel.apply(e);
      else if (e.type === "pointer") this.channel.point(e);
      else if (e.type === "snapshot") this.channel.load(e.channel); // the room when recording began
      else if (e.type === "frame_held") this.held = e;
      else if (e.type === "frame_released" && this.held?.id === e.id) this.held = null;
      changed = true;
    }
    return changed;
  }

  onReset() {}

  point() {}

  annotate() {
    return Promise.reject(new Error("a recording is read-only"));
  }
}

/** @type {ReturnType<typeof setTimeout> | undefined} the next renewal of the file links */
let renewal;

/** @param {string} session */
async function open(session) {
  clearTimeout(renewal);
  const manifest = await api(`/api/recordings/${room}/${session}`);
  $("title").textContent = `${manifest.title || manifest.room} · ${new Date(manifest.started_at * 1000).toLocaleString()}`;
  const logText = await (await fetch(manifest.links[manifest.channel_log])).text();
  const log = logText.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  const replay = new Replay(log);
  for (const [id, p] of Object.entries(manifest.participants)) {
    const person = /** @type {any} */ (p);
    replay.participants.set(id, { name: person.name || person.identity, role: person.role });
  }
  /** @type {{track: any, media: HTMLMediaElement, figure: HTMLElement | null, overlay: Overlay | null}[]} */
  const players = [];
  $("feeds").replaceChildren();
  for (const track of manifest.tracks) {
    if (track.start === null) continue;
    const media = /** @type {HTMLMediaElement} */ (document.createElement(track.kind === "video" ? "video" : "audio"));
    media.src = manifest.links[track.file];
    media.preload = "auto";
    media.dataset.feed = track.feed;
    if (track.kind === "audio") {
      $("feeds").append(media);
      players.push({ track, media, figure: null, overlay: null });
      continue;
    }
    media.muted = true;
    const figure = document.createElement("figure");
    figure.dataset.feed = track.feed;
    const caption = document.createElement("figcaption");
    caption.textContent = track.label || t(`source.${track.source}`);
    figure.append(media, caption);
    $("feeds").append(figure);
    players.push({ track, media, figure, overlay: new Overlay(/** @type {HTMLVideoElement} */ (media), track.feed, /** @type {any} */ (replay)) });
  }
  const attach = () => {
    for (const p of players) {
      if (!p.overlay) continue;
      p.overlay.dispose();
      p.overlay = new Overlay(/** @type {HTMLVideoElement} */ (p.media), p.track.feed, /** @type {any} */ (replay));
    }
  };
  replay.onReset = attach; // a fresh channel: the overlays follow the new one
  const duration = Math.max(...manifest.tracks.map((/** @type {any} */ tr) => (tr.start || 0) + tr.duration), 0);
  const seek = /** @type {HTMLInputElement} */ ($("seek"));
  seek.max = String(duration);
  const state = { time: 0, playing: false, speed: 1, last: performance.now() };

  const chat = () => {
    $("messages").replaceChildren(...replay.channel.chat.map((m) => {
      const li = document.createElement("li");
      li.dataset.seq = String(m.seq);
      // The name and role the room showed when it was said; a recording made before they
      // were written has the people of its manifest.
      const said = /** @type {any} */ (m);
      const known = replay.participants.get(m.author);
      const who = document.createElement("b");
      who.textContent = said.author_name || known?.name || "—";
      const role = said.author_role || known?.role;
      const badge = document.createElement("small");
      badge.className = "role";
      badge.textContent = role ? t(`role.${role}`) : "";
      li.append(who, badge, document.createTextNode(m.text || ""));
      return li;
    }));
  };

  /** @type {Map<string, Promise<string>>} held frame file → its picture, fetched once */
  const stills = new Map();
  /** Show, over its feed's video, the frame held up for everyone at this time. @param {{track: any, media: HTMLMediaElement, figure: HTMLElement | null, overlay: Overlay | null}} p */
  const showHeld = (p) => {
    if (!p.figure || !p.overlay) return;
    const held = replay.held && replay.held.feed === p.track.feed ? replay.held : null;
    let img = /** @type {HTMLImageElement | null} */ (p.figure.querySelector("img.held"));
    p.figure.classList.toggle("is-held", Boolean(held));
    if (!held) {
      if (img) img.hidden = true;
      return;
    }
    if (!img) {
      img = document.createElement("img");
      img.className = "held";
      img.alt = t("playback.held");
      p.media.after(img);
    }
    const box = p.overlay.contentBox();
    Object.assign(img.style, { left: `${box.left}px`, top: `${box.top}px`, width: `${box.width}px`, height: `${box.height}px` });
    img.hidden = false;
    if (img.dataset.held === held.id) return;
    img.dataset.held = held.id;
    if (!stills.has(held.file)) {
      // Fetched, not linked: the file may be on another node, which pictures may not load from.
      stills.set(held.file, fetch(manifest.links[held.file]).then((r) => r.blob()).then((b) => URL.createObjectURL(b)));
    }
    const shown = img;
    stills.get(held.file)?.then((url) => {
      if (shown.dataset.held === held.id) shown.src = url;
    }).catch(() => {});
  };

  /** Put every player where the session clock says. @param {boolean} hard after a seek */
  const sync = (hard) => {
    if (replay.seek(state.time) || hard) chat();
    for (const p of players) showHeld(p);
    for (const p of players) {
      const local = state.time - p.track.start;
      const inside = local >= 0 && local <= p.track.duration;
      if (p.figure) p.figure.classList.toggle("idle", !inside);
      p.media.playbackRate = state.speed;
      if (!inside) {
        if (!p.media.paused) p.media.pause();
        continue;
      }
      if (hard || Math.abs(p.media.currentTime - local) > 0.3) p.media.currentTime = local;
      if (state.playing && p.media.paused) p.media.play().catch(() => {});
      if (!state.playing && !p.media.paused) p.media.pause();
    }
    seek.value = String(state.time);
    $("clock").textContent = `${clock(state.time)} / ${clock(duration)}`;
    document.body.dataset.time = state.time.toFixed(2);
  };

  const frame = () => {
    const now = performance.now();
    if (state.playing) {
      state.time = Math.min(duration, state.time + ((now - state.last) / 1000) * state.speed);
      if (state.time >= duration) {
        state.playing = false;
        $("play").textContent = t("playback.play");
      }
      sync(false);
    }
    state.last = now;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  $("play").onclick = () => {
    state.playing = !state.playing;
    $("play").textContent = t(state.playing ? "playback.pause" : "playback.play");
    sync(true);
  };
  seek.oninput = () => {
    state.time = Number(seek.value);
    sync(true);
  };
  /** @type {HTMLSelectElement} */ ($("speed")).onchange = (ev) => {
    state.speed = Number(/** @type {HTMLSelectElement} */ (ev.target).value);
    sync(false);
  };
  sync(true);
  // File links live minutes (and stop at once when this link is revoked): a minute before they
  // expire, fresh ones replace them; the clock puts each player back where it was.
  /** @param {number} validFor seconds */
  const renewIn = (validFor) => {
    renewal = setTimeout(async () => {
      try {
        const fresh = await api(`/api/recordings/${room}/${session}`);
        for (const p of players) p.media.src = fresh.links[p.track.file];
        manifest.links = fresh.links; // for held frames not fetched yet
        sync(true);
        renewIn(fresh.links_valid_for);
      } catch {
        // Refused now (revoked, removed): the players stop where their links end.
      }
    }, Math.max(5, validFor - 60) * 1000);
  };
  renewIn(manifest.links_valid_for);
  /** @type {any} */ (window).player = { seek: (/** @type {number} */ s) => { state.time = s; sync(true); }, state };
}

try {
  const { sessions } = await api(`/api/recordings/${room}`);
  $("main").hidden = false;
  $("sessions").replaceChildren(...sessions.map((/** @type {any} */ s) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `#session=${s.session_id}`;
    a.textContent = new Date(s.started_at * 1000).toLocaleString();
    a.onclick = (ev) => {
      ev.preventDefault();
      open(s.session_id);
    };
    li.append(a);
    return li;
  }));
  const chosen = params.get("session") || (sessions.length ? sessions[sessions.length - 1].session_id : "");
  if (chosen) await open(chosen);
} catch (err) {
  $("problem").textContent = t("playback.denied");
  $("problem").hidden = false;
}
