// The room page: joins with the token from the link and shows who is in the session.
import { Session } from "./protocol.js";

/** Plain words for the refusals a person can act on. @type {Record<string, string>} */
const PROBLEMS = {
  token_missing: "This link has no access token. Ask the organiser for your personal link.",
  token_invalid: "This link is not valid. Ask the organiser for a new link.",
  token_expired: "This link has expired. Ask the organiser for a new link.",
  token_wrong_room: "This link is for another session.",
  room_ended: "This session has ended.",
  room_full: "This session is full. Try again later or ask the moderator.",
  removed: "A moderator removed you from this session.",
  connection_failed: "Cannot reach the server. Check the network and reload the page.",
};
/** @type {Record<string, string>} */
const STATES = {
  connecting: "Connecting…", reconnecting: "Reconnecting…", joined: "Connected",
  waiting: "Waiting for a moderator to let you in", closed: "Disconnected",
};

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const session = new Session({ url: wsUrl, room, token });

function showProblem(/** @type {string} */ text) {
  $("problem").textContent = text;
  $("problem").hidden = false;
}

/** @type {Map<string, {subscription: string, elements: HTMLElement[]}>} published stream id → what shows it */
const shown = new Map();

/** Receive a published stream and show its feeds. @param {any} stream */
async function show(stream) {
  if (shown.has(stream.id) || (session.welcome && stream.participant_id === session.welcome.participant_id)) return;
  shown.set(stream.id, { subscription: "", elements: [] });
  try {
    const sub = await session.subscribe(stream.id);
    const entry = { subscription: sub.id, elements: /** @type {HTMLElement[]} */ ([]) };
    shown.set(stream.id, entry);
    for (const feed of stream.feeds) {
      const track = sub.tracks.get(feed.id);
      if (!track) continue;
      const media = document.createElement(feed.kind === "video" ? "video" : "audio");
      media.autoplay = true;
      media.setAttribute("playsinline", "");
      if (feed.kind === "video") media.muted = true; // autoplay policies allow muted video
      media.srcObject = new MediaStream([track]);
      media.dataset.feed = feed.id;
      media.dataset.source = feed.source;
      if (feed.kind === "video") {
        const figure = document.createElement("figure");
        const caption = document.createElement("figcaption");
        caption.textContent = feed.label || feed.source;
        figure.append(media, caption);
        $("feeds").append(figure);
        entry.elements.push(figure);
      } else {
        $("feeds").append(media);
        entry.elements.push(media);
      }
    }
  } catch (err) {
    shown.delete(stream.id);
  }
}

/** Stop showing a stream. @param {string} streamId */
function hide(streamId) {
  const entry = shown.get(streamId);
  if (!entry) return;
  for (const el of entry.elements) el.remove();
  shown.delete(streamId);
}

function render() {
  const me = session.welcome ? session.welcome.participant_id : "";
  const list = $("participants");
  list.replaceChildren(...[...session.participants.values()].map((p) => {
    const li = document.createElement("li");
    li.dataset.role = p.role;
    li.textContent = p.name + (p.id === me ? " (you)" : "") + (p.muted ? " — muted" : "");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = p.role;
    li.append(role);
    return li;
  }));
  $("people").hidden = session.state !== "joined";
}

session.addEventListener("state", (ev) => {
  const state = /** @type {CustomEvent} */ (ev).detail;
  if (state === "reconnecting" || state === "closed") for (const id of [...shown.keys()]) hide(id);
  $("state").dataset.state = state;
  $("state").textContent = STATES[state] || state;
  render();
});
session.addEventListener("message", (ev) => {
  const msg = /** @type {CustomEvent} */ (ev).detail;
  if (msg.room && msg.room.title) $("title").textContent = msg.room.title;
  if (msg.type === "room_ended") showProblem(PROBLEMS.room_ended);
  if (msg.type === "removed") showProblem(PROBLEMS.removed);
  if (msg.type === "denied") showProblem("The moderator did not let you in.");
  if ((msg.type === "welcome" || msg.type === "admitted") && msg.streams) for (const s of msg.streams) show(s);
  if (msg.type === "stream_added") show(msg.stream);
  if (msg.type === "stream_removed") hide(msg.stream_id);
  render();
});
$("leave").addEventListener("click", () => {
  session.leave();
  showProblem("You left the session.");
});
history.replaceState(null, "", location.pathname); // keep the token out of the address bar
session.connect().catch((/** @type {{code: string, message: string}} */ err) => {
  showProblem(PROBLEMS[err.code] || err.message);
});
