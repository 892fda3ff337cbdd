// The room page a join link opens. One page for every role: what it shows follows the role
// the token grants (operator feeds, expert tools and talk-back, audience chat, moderation).

import { mountAudio } from "./audio.js";
import { mountChat } from "./chat.js";
import { mountConnections } from "./connections.js";
import { Stage } from "./feeds.js";
import { mountHeldFrames } from "./held.js";
import { LANGUAGES, pickLanguage, setLanguage, t, translate } from "./i18n.js";
import { watchIndicators } from "./indicators.js";
import { Devices } from "./operator.js";
import { Notices, mountPresence } from "./notices.js";
import { mountPeople } from "./people.js";
import { Session } from "./protocol.js";
import { ScreenShare } from "./share.js";
import { followPastedLinks, tabToken } from "./tab.js";
import { TalkBack, Toolbar, watchHealth, watchViewKeys } from "./tools.js";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
// Kept for this tab only, so that a reload stays in the session; never in the address bar.
const token = tabToken();
followPastedLinks();

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
/** @type {ScreenShare | null} */
let share = null;
let endedKey = "";
const notices = new Notices($("notices"));
const presence = mountPresence(session, notices, $("nofeeds"));

/**
 * The session is over for this page: say why, stop every camera and microphone and show nothing
 * of the room any more (a reconnect is not an end: the session makes again what the network
 * took). @param {string} key a locale key @param {boolean} [rejoin] whether joining again may work
 */
function end(key, rejoin = false) {
  if (endedKey) return;
  endedKey = key;
  stage.dropAll();
  devices?.reset(!rejoin);
  talk?.reset();
  share?.stop();
  notices.clearAll();
  $("problem").hidden = true;
  $("main").hidden = true;
  $("consent").hidden = true;
  $("leave").hidden = true;
  $("banner").hidden = true;
  $("rejoin").hidden = !rejoin;
  $("ended-title").textContent = t(key);
  $("ended").hidden = false;
  document.body.dataset.ended = key;
}

function refresh() {
  translate(document);
  $("state").textContent = t(`state.${session.state}`);
  if (endedKey) $("ended-title").textContent = t(endedKey);
  $("watching").textContent = t("watching", { count: Math.max(0, session.participants.size - 1) });
  notices.translate();
  presence.render();
}

session.addEventListener("state", (ev) => {
  const state = /** @type {CustomEvent} */ (ev).detail;
  $("state").dataset.state = state;
  $("state").textContent = t(`state.${state}`);
  $("banner").hidden = state !== "reconnecting";
  $("main").hidden = Boolean(endedKey) || (state !== "joined" && state !== "reconnecting");
});

// Why a joined session ended, by the server's close code (docs/protocol.md, "Close codes").
/** @type {Record<number, [string, boolean]>} */
const ENDINGS = {
  4001: ["problem.token_revoked", false],
  4005: ["problem.left", true],
  4009: ["problem.removed", false],
  4010: ["problem.replaced", true],
  4011: ["problem.room_ended", false],
  4012: ["problem.denied", false],
};
session.addEventListener("closed", (ev) => {
  const { code } = /** @type {CustomEvent} */ (ev).detail;
  const [key, rejoin] = ENDINGS[code] || ["problem.connection_failed", true];
  end(key, rejoin);
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
  if (msg.type === "room_ended") end("problem.room_ended");
  if (msg.type === "removed") end("problem.removed");
  if (msg.type === "denied") end("problem.denied");
  if (msg.type === "role_changed" && msg.participant_id === session.me) {
    setUpRole();
    notices.show("role", "notice.role", { role: t(`role.${msg.role}`) });
  }
  if (msg.type === "granted" && msg.participant_id === session.me) setUpRole();
  if (msg.type === "muted" && msg.participant_id === session.me && msg.muted && msg.by !== session.me) {
    // A moderator muted this page: its microphone goes off here too, and it says so.
    if (talk?.on()) talk.set(false);
    notices.show("muted", "notice.muted");
  }
  if ((msg.type === "welcome" || msg.type === "admitted") && msg.recording) $("recording").hidden = !msg.recording.active;
  if (msg.type === "recording") {
    $("recording").hidden = !msg.active;
    // Answered, taken back or declined: the question is over.
    if (!msg.pending) $("consent").hidden = true;
  }
  if (msg.type === "consent_requested") $("consent").hidden = false;
  if (msg.type !== "pointer") refresh(); // pointers come sixty times a second and change no text
});

/** Show what this participant's role (and the moderator's grants) let it use. */
function setUpRole() {
  const role = session.role;
  document.body.dataset.role = role;
  const publishes = role === "operator";
  $("operator").hidden = !publishes;
  // No longer the operator: the server ends what the new role may not send; what it still may
  // (a microphone) stops too, as its controls are gone with the panel.
  if (!publishes) devices?.stopAll();
  if (publishes && !devices) {
    devices = new Devices(session, stage, $("devices"), (text) => {
      $("problem").textContent = text;
      $("problem").hidden = false;
    });
    devices.build();
    $("refresh").addEventListener("click", () => devices?.build());
  }
  $("links").hidden = role !== "moderator";
  const floor = Boolean(session.participants.get(session.me)?.floor);
  const talks = role === "expert" || role === "moderator" || floor;
  if (!talks && talk?.on()) talk.set(false);
  $("talk").hidden = !talks;
  if (talks && !talk) talk = new TalkBack(session);
  // Experts and moderators share a screen of their own; the operator's panel has it as a source.
  const shares = role === "expert" || role === "moderator";
  $("share").hidden = !shares;
  if (!shares) share?.stop();
  if (shares && !share) share = new ScreenShare(session, stage, /** @type {HTMLButtonElement} */ ($("share")));
}

const toolbar = new Toolbar(session, stage);
mountHeldFrames(session, stage, notices, () => toolbar.allowed());
mountPeople(session);
mountChat(session);
mountConnections(session, $("links"), $("links-table"));
watchHealth(stage, $("health"));
watchViewKeys(stage);
watchIndicators(session, stage, $("participants"), $("speaker"));
const audio = mountAudio(stage, /** @type {HTMLSelectElement} */ ($("mic-choice")), /** @type {HTMLSelectElement} */ ($("speaker-choice")), $("participants"), (id) => {
  talk?.useMicrophone(id).catch(() => {});
});
$("settings").addEventListener("toggle", () => audio.list().catch(() => {}));
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
  end("problem.left", true);
  devices?.reset(true); // joining again starts no camera by itself
});
$("rejoin").addEventListener("click", () => location.reload());

session.connect().catch((/** @type {{code: string, message: string}} */ err) => {
  const key = `problem.${err.code}`;
  end(t(key) !== key ? key : "problem.connection_failed", err.code === "connection_failed");
});
