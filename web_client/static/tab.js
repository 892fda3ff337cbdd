// What one browser tab keeps of its session across a reload: the access token (never in the
// address bar, its history or any request line) and what the operator was sending.

const TOKEN = "teleconsult.token.";
const FEEDS = "teleconsult.feeds.";

/**
 * The token this tab opened its page with: from the link just opened (then taken out of the
 * address bar, the fragment's other keys kept), else the one the tab kept before a reload.
 */
export function tabToken() {
  const key = TOKEN + location.pathname;
  const params = new URLSearchParams(location.hash.slice(1));
  const fresh = params.get("token");
  if (fresh) {
    sessionStorage.setItem(key, fresh);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `#${rest}` : ""));
    return fresh;
  }
  return sessionStorage.getItem(key) || "";
}

/**
 * A link pasted into the address bar of a tab already on its page changes only the fragment,
 * which loads nothing: take its token and open the page again with it.
 */
export function followPastedLinks() {
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).get("token") && tabToken()) location.reload();
  });
}

/**
 * @typedef {{row: string, device: string, source: string, label: string, depth?: string}} RunningFeed
 *   a feed the operator had started: which row, device and source, and its label and depth
 */

/** The feeds this tab was sending in a room before it was reloaded. @param {string} room @returns {RunningFeed[]} */
export function keptFeeds(room) {
  try {
    const kept = JSON.parse(sessionStorage.getItem(FEEDS + room) || "[]");
    return Array.isArray(kept) ? kept : [];
  } catch {
    return [];
  }
}

/** Keep the feeds this tab sends, to start them again after a reload. @param {string} room @param {RunningFeed[]} feeds */
export function keepFeeds(room, feeds) {
  sessionStorage.setItem(FEEDS + room, JSON.stringify(feeds));
}
