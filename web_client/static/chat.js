// Questions and chat, and the raised hand, on the room's ordered channel.

import { t } from "./i18n.js";

/** @typedef {import("./protocol.js").Session} Session */

/** @param {Session} session */
export function mountChat(session) {
  const list = /** @type {HTMLElement} */ (document.getElementById("messages"));
  const form = /** @type {HTMLFormElement} */ (document.getElementById("chat-form"));
  const input = /** @type {HTMLInputElement} */ (document.getElementById("chat-text"));
  const hand = /** @type {HTMLButtonElement} */ (document.getElementById("hand"));
  const render = () => {
    list.replaceChildren(...session.channel.chat.map((m) => {
      const li = document.createElement("li");
      li.dataset.seq = String(m.seq);
      const who = document.createElement("b");
      who.textContent = session.participants.get(m.author)?.name || "—";
      li.append(who, document.createTextNode(m.text || ""));
      return li;
    }));
    list.scrollTop = list.scrollHeight;
    const raised = session.channel.hands.has(session.me);
    hand.dataset.i18n = raised ? "hand.lower" : "hand.raise"; // kept when the page is translated
    hand.textContent = t(hand.dataset.i18n);
    hand.setAttribute("aria-pressed", String(raised));
  };
  // Not for pointers, which move sixty times a second.
  session.channel.addEventListener("change", (ev) => {
    const op = /** @type {CustomEvent} */ (ev).detail;
    if (!op || op.op === "chat" || op.op === "hand") render();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    session.chat(text).catch(() => {});
  });
  hand.addEventListener("click", () => session.raiseHand(!session.channel.hands.has(session.me)).catch(() => {}));
  render();
}
