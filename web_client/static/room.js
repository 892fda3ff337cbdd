// The room page a join link opens. One page for every role: what it shows follows the role
// the token grants (operator feeds, expert tools and talk-back, audience chat, moderation).

import { mountChat } from "./chat.js";
import { mountConnections } from "./connections.js";
import { Stage } from "./feeds.js";
import { LANGUAGES, pickLanguage, setLanguage, t, translate } from "./i18n.js";
import { Devices } from "./operator.js";
import { mountPeople } from "./people.js";
import { Session } from "./protocol.js";
import { TalkBack, Toolbar, watchHealth } from "./tools.js";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
const token = params.get("token") || "";
history.replaceState(null, "", location.pathname); // keep the token out of the address bar and history

await setLanguage(pickLanguage());
const lang = /** @type {HTMLSelectElement} */ ($("lang"));
for (const [code, name] of Object.entries(LANGUAGES)) lang.append(new Option(name, code));
lang.value = pickLanguage();
lang.addEventListener("change", () => setLanguage(lang.value).then(refresh));

const session = new Session({ url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, room, token });
const stage = new Stage(session, $("feeds"));
/** @type {Devices | null} */
let devices = null;
/** @type {TalkBack | null} */
let talk = null;
let problemKey = "";

/** @param {string} key a locale key */
function showProblem(key) {
  problemKey = key;
  $("problem").textContent = t(key);
  $("problem").hidden = false;
}

function refresh() {
  translate(document);
  $("state").textContent = t(`state.${session.state}`);
  if (problemKey) $("problem").textContent = t(problemKey);
  $("watching").textContent = t("watching", { count: Math.max(0, session.participants.size - 1) });
}

session.addEventListener("state", (ev) => {
  const state = /** @type {CustomEvent} */ (ev).detail;
  $("state").dataset.state = state;
  $("state").textContent = t(`state.${state}`);
  $("banner").hidden = state !== "reconnecting";
  $("main").hidden = state !== "joined" && state !== "reconnecting";
  if (state === "closed") {
    // The session is over: what it received and published ended with it. A reconnect keeps
    // both; the session makes again whatever the network took (protocol.js).
    stage.dropAll();
    devices?.reset();
    talk?.reset();
  }
});

session.addEventListener("message", (ev) => {
  const msg = /** @type {CustomEvent} */ (ev).detail;
  if (msg.room && msg.room.title) $("title").textContent = msg.room.title;
  if (msg.type === "welcome" || msg.type === "admitted") {
    if (msg.streams) stage.reconcile(msg.streams);
    setUpRole();
  }
  if (msg.type === "stream_added") stage.receive(msg.stream);
  if (msg.type === "stream_removed") stage.drop(msg.stream_id);
  if (msg.type === "stream_state") stage.mark(msg.stream_id, msg.state);
  if (msg.type === "room_ended") showProblem("problem.room_ended");
  if (msg.type === "removed") showProblem("problem.removed");
  if (msg.type === "denied") showProblem("problem.denied");
  if (msg.type === "role_changed" && msg.participant_id === session.me) setUpRole();
  if ((msg.type === "welcome" || msg.type === "admitted") && msg.recording) $("recording").hidden = !msg.recording.active;
  if (msg.type === "recording") $("recording").hidden = !msg.active;
  if (msg.type === "consent_requested") $("consent").hidden = false;
  refresh();
});

let roleReady = "";
/** Show what this participant's role uses; once per role. */
function setUpRole() {
  const role = session.role;
  if (role === roleReady) return;
  roleReady = role;
  document.body.dataset.role = role;
  const publishes = role === "operator";
  $("operator").hidden = !publishes;
  if (publishes && !devices) {
    devices = new Devices(session, stage, $("devices"), (text) => {
      $("problem").textContent = text;
      $("problem").hidden = false;
    });
    devices.build();
    $("refresh").addEventListener("click", () => devices?.build());
  }
  $("links").hidden = role !== "moderator";
  const talks = role === "expert" || role === "moderator";
  $("talk").hidden = !talks;
  if (talks && !talk) talk = new TalkBack(session);
}

new Toolbar(session, stage);
mountPeople(session);
mountChat(session);
mountConnections(session, $("links"), $("links-table"));
watchHealth(stage, $("health"));
for (const b of document.querySelectorAll("#layout button[data-layout]")) {
  b.addEventListener("click", () => stage.setLayout(/** @type {HTMLElement} */ (b).dataset.layout || "spotlight"));
}
for (const [id, confirmed] of /** @type {[string, boolean][]} */ ([["consent-yes", true], ["consent-no", false]])) {
  $(id).addEventListener("click", () => {
    session.send({ type: "consent", confirmed });
    $("consent").hidden = true;
  });
}
$("leave").addEventListener("click", () => {
  session.leave();
  showProblem("problem.left");
});

session.connect().catch((/** @type {{code: string, message: string}} */ err) => {
  const key = `problem.${err.code}`;
  if (t(key) !== key) showProblem(key);
  else {
    $("problem").textContent = err.message;
    $("problem").hidden = false;
  }
});
