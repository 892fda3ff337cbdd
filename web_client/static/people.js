// Who is in the session, with the moderator's controls beside each participant.

import { t } from "./i18n.js";

/** @typedef {import("./protocol.js").Session} Session */

const ROLES = ["operator", "expert", "audience", "moderator"];
// The messages that change who is listed, how, or the moderator's controls.
const LIST_CHANGES = new Set(["welcome", "admitted", "joined", "left", "knock", "role_changed", "muted", "granted", "recording", "consent_declined"]);

/** @param {Session} session */
export function mountPeople(session) {
  const list = /** @type {HTMLElement} */ (document.getElementById("participants"));
  const waitingBox = /** @type {HTMLElement} */ (document.getElementById("waiting"));
  const waitingList = /** @type {HTMLElement} */ (document.getElementById("waiting-list"));
  const moderation = /** @type {HTMLElement} */ (document.getElementById("moderation"));
  const end = /** @type {HTMLButtonElement} */ (document.getElementById("end"));
  const record = /** @type {HTMLButtonElement} */ (document.getElementById("record"));
  const recordWait = /** @type {HTMLElement} */ (document.getElementById("record-wait"));
  const handsBox = /** @type {HTMLElement} */ (document.getElementById("hands"));
  const handsList = /** @type {HTMLElement} */ (document.getElementById("hands-list"));
  const muteAll = /** @type {HTMLButtonElement} */ (document.getElementById("mute-all"));
  let recording = false;
  // A start waiting for the operator's answer on the patient's consent.
  let pending = false;
  /** @type {Map<string, any>} */
  const waiting = new Map();

  const button = (/** @type {string} */ key, /** @type {() => void} */ action) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.action = key;
    b.textContent = t(key);
    b.addEventListener("click", action);
    return b;
  };

  const render = () => {
    const moderator = session.role === "moderator";
    list.replaceChildren(...[...session.participants.values()].map((p) => {
      const li = document.createElement("li");
      li.dataset.participant = p.id;
      li.dataset.role = p.role;
      const name = document.createElement("span");
      name.textContent = p.name + (p.id === session.me ? ` (${t("you")})` : "") + (p.muted ? ` · ${t("muted")}` : "");
      const role = document.createElement("span");
      role.className = "role";
      role.dataset.i18n = `role.${p.role}`;
      role.textContent = t(`role.${p.role}`);
      li.append(name, role);
      if (session.channel.hands.has(p.id)) {
        const hand = document.createElement("span");
        hand.className = "hand";
        hand.textContent = `✋ ${t("hand.raised")}`;
        li.append(hand);
      }
      // The recorder is the server's own participant: nothing to mute, grant or remove.
      if (moderator && p.id !== session.me && p.role !== "recorder") {
        const controls = document.createElement("div");
        controls.className = "controls";
        const select = document.createElement("select");
        select.setAttribute("aria-label", t("mod.role"));
        for (const r of ROLES) select.append(new Option(t(`role.${r}`), r, false, r === p.role));
        select.addEventListener("change", () => session.send({ type: "set_role", participant: p.id, role: select.value }));
        controls.append(select,
          button("mod.mute", () => session.send({ type: "mute", participant: p.id })),
          button(p.may_annotate ? "mod.revoke" : "mod.grant", () => session.send({ type: "grant", participant: p.id, annotate: !p.may_annotate })),
          button(p.floor ? "mod.unfloor" : "mod.floor", () => session.send({ type: "grant", participant: p.id, floor: !p.floor })),
          button("mod.mute_others", () => session.send({ type: "mute_all", keep: p.id })),
          button("mod.remove", () => session.send({ type: "remove", participant: p.id })));
        li.append(controls);
      }
      return li;
    }));
    waitingBox.hidden = !moderator || !waiting.size;
    waitingList.replaceChildren(...[...waiting.values()].map((p) => {
      const li = document.createElement("li");
      li.dataset.participant = p.id;
      const name = document.createElement("span");
      name.textContent = `${p.name} · ${t(`role.${p.role}`)}`;
      li.append(name,
        button("mod.admit", () => session.send({ type: "admit", participant: p.id })),
        button("mod.deny", () => session.send({ type: "deny", participant: p.id })));
      return li;
    }));
    // The raised hands in the order they were raised: the moderator gives the floor from the top.
    const queue = [...session.channel.hands].sort((a, b) => a[1] - b[1]).flatMap(([id]) => {
      const p = session.participants.get(id);
      return p ? [p] : [];
    });
    handsBox.hidden = !moderator || !queue.length;
    handsList.replaceChildren(...queue.map((p) => {
      const li = document.createElement("li");
      li.dataset.participant = p.id;
      const name = document.createElement("span");
      name.textContent = `${p.name} · ${t(`role.${p.role}`)}`;
      li.append(name,
        button("mod.floor", () => session.send({ type: "grant", participant: p.id, floor: true })),
        button("mod.mute_others", () => session.send({ type: "mute_all", keep: p.id })));
      return li;
    }));
    moderation.hidden = !moderator;
    record.dataset.i18n = recording ? "mod.record_stop" : pending ? "mod.record_cancel" : "mod.record";
    record.textContent = t(record.dataset.i18n);
    record.setAttribute("aria-pressed", String(recording || pending));
    recordWait.hidden = !pending;
  };

  session.addEventListener("message", (ev) => {
    const msg = /** @type {CustomEvent} */ (ev).detail;
    if (msg.type === "welcome" && msg.waiting) for (const p of msg.waiting) waiting.set(p.id, p);
    if (msg.type === "knock") waiting.set(msg.participant.id, msg.participant);
    if (msg.type === "joined" || msg.type === "left") waiting.delete(msg.participant ? msg.participant.id : msg.participant_id);
    if (msg.type === "welcome" && msg.recording) recording = msg.recording.active;
    if (msg.type === "recording") {
      recording = msg.active;
      pending = !msg.active && Boolean(msg.pending);
    }
    if (msg.type === "consent_declined") pending = false;
    if (LIST_CHANGES.has(msg.type)) render();
  });
  session.addEventListener("state", render);
  // Hands only: pointers move sixty times a second, and a list rebuilt under the moderator's
  // hand loses the menu they are opening.
  session.channel.addEventListener("change", (ev) => {
    const op = /** @type {CustomEvent} */ (ev).detail;
    if (!op || op.op === "hand") render();
  });
  // Stop also takes back a start that waits for consent.
  record.addEventListener("click", () => session.send({ type: "record", action: recording || pending ? "stop" : "start" }));
  muteAll.addEventListener("click", () => session.send({ type: "mute_all" }));
  end.addEventListener("click", () => {
    if (confirm(t("mod.end_confirm"))) session.send({ type: "end_room" });
  });
  render();
}
