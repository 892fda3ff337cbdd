// Short notices about the people and feeds of the session (who left, whose network dropped, a
// second operator), read out by screen readers, and the text shown when no feed is there.

import { t } from "./i18n.js";

/** @typedef {import("./protocol.js").Session} Session */

// Long enough to be read by someone looking at the image, short enough not to pile up.
const SHOW_MS = 12000;

/** A list of notices; each keeps its key so that it can be translated again. */
export class Notices {
  /** @param {HTMLElement} root */
  constructor(root) {
    this.root = root;
  }

  /**
   * Show a notice, replacing one with the same id. @param {string} id @param {string} key
   * @param {Record<string, string>} [params] @param {boolean} [sticky] kept until dismissed or replaced
   */
  show(id, key, params = {}, sticky = false) {
    this.clear(id);
    const li = document.createElement("li");
    li.dataset.notice = id;
    li.dataset.key = key;
    li.dataset.params = JSON.stringify(params);
    const text = document.createElement("span");
    const close = document.createElement("button");
    close.type = "button";
    close.className = "dismiss";
    close.textContent = "×";
    close.addEventListener("click", () => li.remove());
    li.append(text, close);
    this.root.append(li);
    this.translate();
    if (!sticky) setTimeout(() => li.remove(), SHOW_MS);
  }

  /** Take a notice away. @param {string} id */
  clear(id) {
    for (const li of this.root.querySelectorAll(`li[data-notice="${CSS.escape(id)}"]`)) li.remove();
  }

  /** Take every notice away. */
  clearAll() {
    this.root.replaceChildren();
  }

  /** Show every notice in the current language. */
  translate() {
    for (const li of /** @type {NodeListOf<HTMLElement>} */ (this.root.querySelectorAll("li[data-notice]"))) {
      const span = /** @type {HTMLElement} */ (li.firstElementChild);
      span.textContent = t(li.dataset.key || "", JSON.parse(li.dataset.params || "{}"));
      const close = /** @type {HTMLElement} */ (li.lastElementChild);
      close.setAttribute("aria-label", t("notice.dismiss"));
    }
  }
}

/**
 * Tell this participant who came, went, dropped and came back, and what the empty stage waits
 * for. @param {Session} session @param {Notices} notices @param {HTMLElement} empty the text shown with no feed
 */
export function mountPresence(session, notices, empty) {
  /** @type {Map<string, {name: string, role: string, identity: string}>} everyone seen, kept after they leave */
  const known = new Map();
  /** @type {{key: string, params: Record<string, string>}} */
  let waitingFor = { key: "nofeeds", params: {} };
  const who = (/** @type {string} */ id) => known.get(id) || { name: "—", role: "", identity: id };
  const named = (/** @type {{name: string, role: string}} */ p) => ({ name: p.name, role: t(`role.${p.role}`) });

  session.addEventListener("message", (ev) => {
    const msg = /** @type {CustomEvent} */ (ev).detail;
    if (msg.type === "joined" && msg.participant.role === "operator") {
      const others = [...session.participants.values()].filter((p) => p.role === "operator" && p.id !== msg.participant.id);
      if (others.length) notices.show(`second-${msg.participant.id}`, "notice.second_operator", { name: msg.participant.name });
    }
    if (msg.type === "left" && msg.participant_id !== session.me) {
      const p = who(msg.participant_id);
      notices.clear(`away-${msg.participant_id}`);
      notices.show(`left-${p.identity}`, "notice.left", named(p), p.role === "operator");
      if (p.role === "operator") waitingFor = { key: "nofeeds.operator_left", params: { name: p.name } };
    }
    if (msg.type === "presence" && msg.participant_id !== session.me) {
      const p = who(msg.participant_id);
      if (!msg.connected) notices.show(`away-${msg.participant_id}`, "notice.away", named(p), true);
      else {
        notices.clear(`away-${msg.participant_id}`);
        notices.show(`back-${msg.participant_id}`, "notice.back", named(p));
      }
    }
    if (msg.type === "joined") notices.clear(`left-${msg.participant.identity}`); // came back
    if (msg.type === "stream_added") waitingFor = { key: "nofeeds", params: {} };
    if (msg.type === "consent_declined") notices.show("consent", "notice.consent_declined", named(who(msg.by)), true);
    for (const p of session.participants.values()) known.set(p.id, { name: p.name, role: p.role, identity: p.identity });
    render();
  });

  const render = () => {
    empty.textContent = t(waitingFor.key, waitingFor.params);
  };
  return { render };
}
