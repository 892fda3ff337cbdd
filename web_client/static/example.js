// A minimal client built on protocol.js: join, receive every feed, publish a camera, point at
// a video, chat. Everything the full room page does starts from these calls.

import { Session } from "./protocol.js";

const params = new URLSearchParams(location.hash.slice(1));
const session = new Session({
  url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`,
  room: params.get("room") || "",
  token: params.get("token") || "",
});

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** @param {string} line */
const log = (line) => {
  $("log").textContent += `${line}\n`;
};

/** @type {Map<string, HTMLMediaElement>} feed id → the element playing it */
const players = new Map();

/** Receive a published stream: one peer connection, a video element per video feed. @param {any} stream */
async function receive(stream) {
  if (stream.participant_id === session.me) return;
  const sub = await session.subscribe(stream.id);
  for (const feed of stream.feeds) {
    const track = sub.tracks.get(feed.id);
    if (!track) continue;
    if (feed.kind === "audio") {
      const audio = new Audio();
      audio.srcObject = new MediaStream([track]);
      players.set(feed.id, audio);
      audio.play().catch(() => log("click the page to hear audio"));
      continue;
    }
    const box = document.createElement("div");
    box.dataset.stream = stream.id;
    const video = document.createElement("video");
    video.autoplay = true;
    video.muted = true;
    video.playsInline = true;
    video.srcObject = new MediaStream([track]);
    video.dataset.feed = feed.id;
    players.set(feed.id, video);
    // A click points at that spot of the picture, as fractions of the frame (docs/protocol.md).
    video.addEventListener("click", (ev) => {
      const r = video.getBoundingClientRect();
      session.point(feed.id, [[(ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height]]);
    });
    box.append(video);
    $("videos").append(box);
  }
  log(`receiving ${stream.feeds.map((/** @type {any} */ f) => f.source).join(", ")}`);
}

/** Show other people's pointers as dots over the video of the feed they point at. */
function drawPointers() {
  for (const dot of document.querySelectorAll(".dot")) dot.remove();
  for (const p of session.channel.pointers.values()) {
    const video = document.querySelector(`video[data-feed="${p.feed}"]`);
    if (!video || !video.parentElement || !p.points.length) continue;
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.left = `${p.points[0][0] * 100}%`;
    dot.style.top = `${p.points[0][1] * 100}%`;
    video.parentElement.append(dot);
  }
}

session.addEventListener("state", (ev) => {
  $("status").textContent = /** @type {CustomEvent} */ (ev).detail;
});

session.addEventListener("message", (ev) => {
  const msg = /** @type {CustomEvent} */ (ev).detail;
  switch (msg.type) {
    case "welcome":
      log(`joined ${msg.room.id} as ${msg.you.role}; ${msg.participants.length} here`);
      for (const s of msg.streams || []) receive(s);
      break;
    case "joined":
      log(`${msg.participant.name} joined`);
      break;
    case "left":
      log(`someone left (${msg.reason})`);
      break;
    case "stream_added":
      receive(msg.stream);
      break;
    case "stream_removed":
      for (const el of document.querySelectorAll(`[data-stream="${msg.stream_id}"]`)) el.remove();
      break;
    case "op":
      if (msg.op === "chat") log(`${session.participants.get(msg.author)?.name || "?"}: ${msg.text}`);
      else log(`#${msg.seq} ${msg.op} on ${msg.feed || "all"}`);
      break;
    case "error":
      log(`error ${msg.code}: ${msg.message}`);
      break;
  }
});

session.channel.addEventListener("change", drawPointers);
// After a network change the session receives a stream again on a new connection: same feeds,
// new tracks, put into the same elements.
session.addEventListener("subscribed", (ev) => {
  const sub = /** @type {CustomEvent} */ (ev).detail;
  for (const [feed, track] of sub.tracks) {
    const el = players.get(feed);
    if (el) el.srcObject = new MediaStream([track]);
  }
});

$("camera").addEventListener("click", async () => {
  const media = await navigator.mediaDevices.getUserMedia({ video: true });
  try {
    const published = await session.publish([{ track: media.getVideoTracks()[0], source: "camera", label: "My camera" }]);
    log(`publishing ${published.id}`);
  } catch (err) {
    log(`cannot publish: ${/** @type {any} */ (err).code}`);
  }
});

$("chat").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("text"));
  if (input.value) session.chat(input.value).catch((e) => log(`refused: ${e.code}`));
  input.value = "";
});

session.connect().catch((err) => log(`could not join: ${err.code} ${err.message}`));
