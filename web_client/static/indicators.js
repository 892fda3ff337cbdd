// Who is speaking and how good each participant's connection is: a ring on the name and
// picture of each participant the server hears speaking, the active speaker in the header (the
// loudest of them this page receives, else the latest to start), and quality bars beside every
// name from the received tracks' statistics (this page's own from what it sends).

import { t } from "./i18n.js";
import { LinkMeter, grade } from "./stats.js";

/** @typedef {import("./protocol.js").Session} Session @typedef {import("./feeds.js").Stage} Stage */

// Often enough that a ring follows a voice, rarely enough to cost nothing.
const EVERY_MS = 300;
// An audio level (0..1, 1 = full scale) above which a received voice is heard.
const SPEAKING_LEVEL = 0.02;

/**
 * Mark speakers and connection quality on the page.
 * @param {Session} session @param {Stage} stage @param {HTMLElement} people the participant list
 * @param {HTMLElement} speaker the header's active speaker
 */
export function watchIndicators(session, stage, people, speaker) {
  /** @type {Map<RTCPeerConnection, LinkMeter>} */
  const meters = new Map();
  /** @type {string[]} who speaks, as the server hears it, the latest to start last */
  let speakers = [];
  /** @type {Map<string, "good" | "fair" | "poor">} */
  let quality = new Map();
  let active = "";

  const meter = (/** @type {RTCPeerConnection} */ pc) => {
    let m = meters.get(pc);
    if (!m) meters.set(pc, (m = new LinkMeter(pc)));
    return m;
  };

  const tick = async () => {
    if (document.visibilityState !== "visible") return;
    /** @type {Map<string, string>} received track id → whose */
    const owner = new Map();
    for (const view of stage.views.values()) {
      const media = /** @type {MediaStream | null} */ (view.media.srcObject);
      for (const track of media ? media.getTracks() : []) owner.set(track.id, view.participant);
    }
    /** @type {Map<string, "good" | "fair" | "poor">} */
    const next = new Map();
    const worse = (/** @type {string} */ who, /** @type {"good" | "fair" | "poor"} */ q) => {
      const order = ["good", "fair", "poor"];
      const was = next.get(who);
      if (!was || order.indexOf(q) > order.indexOf(was)) next.set(who, q);
    };
    let loudest = { who: "", level: 0 };
    for (const entry of stage.streams.values()) {
      if (!entry.pc) continue;
      const reading = await meter(entry.pc).read();
      worse(entry.participant, grade(reading));
      for (const [track, level] of reading.levels) {
        const who = owner.get(track);
        if (!who || level < SPEAKING_LEVEL || !session.speaking.has(who)) continue;
        if (level > loudest.level) loudest = { who, level };
      }
    }
    // This page's own link: what the server reports of what it sends, else what it receives.
    for (const pub of session.published.values()) worse(session.me, grade(await meter(pub.pc).read()));
    if (!next.has(session.me) && stage.streams.size) {
      for (const q of next.values()) worse(session.me, q);
    }
    for (const pc of [...meters.keys()]) if (pc.connectionState === "closed") meters.delete(pc);
    quality = next;
    if (loudest.who) active = loudest.who;
    show();
  };

  /** Put the marks on the page. */
  const show = () => {
    const speaking = new Set(speakers);
    if (!speaking.has(active)) active = speakers[speakers.length - 1] || "";
    for (const li of /** @type {NodeListOf<HTMLElement>} */ (people.querySelectorAll("li[data-participant]"))) {
      const who = li.dataset.participant || "";
      li.classList.toggle("speaking", speaking.has(who));
      mark(li, quality.get(who));
    }
    for (const fig of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll("#feeds figure[data-participant]"))) {
      fig.classList.toggle("speaking", speaking.has(fig.dataset.participant || ""));
    }
    const p = active ? session.participants.get(active) : undefined;
    speaker.hidden = !p;
    speaker.dataset.participant = p ? p.id : "";
    speaker.textContent = p ? t("speaking", { name: p.name }) : "";
  };

  session.addEventListener("speaking", () => {
    // Kept in the order they started: the latest to start is the active one, until a reading.
    speakers = [...speakers.filter((who) => session.speaking.has(who)), ...[...session.speaking.keys()].filter((who) => !speakers.includes(who))];
    show();
  });
  setInterval(() => tick().catch(() => {}), EVERY_MS);
  // A re-rendered list gets its marks back at once, not at the next reading.
  new MutationObserver(() => show()).observe(people, { childList: true });
}

/**
 * Quality bars beside a name. @param {HTMLElement} li @param {"good" | "fair" | "poor" | undefined} q
 */
function mark(li, q) {
  let bars = /** @type {HTMLElement | null} */ (li.querySelector(".quality"));
  if (!q) {
    bars?.remove();
    return;
  }
  if (!bars) {
    bars = document.createElement("span");
    bars.className = "quality";
    bars.setAttribute("role", "img");
    for (let i = 0; i < 3; i++) bars.append(document.createElement("i"));
    li.firstElementChild?.after(bars);
  }
  bars.dataset.quality = q;
  bars.setAttribute("aria-label", t(`quality.${q}`));
  bars.title = t(`quality.${q}`);
}
