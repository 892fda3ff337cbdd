// What this page hears and says through: the microphone and speaker chosen (kept in the
// browser), and a volume for each participant heard.

import { t } from "./i18n.js";

/** @typedef {import("./feeds.js").Stage} Stage */

const MICROPHONE = "teleconsult.microphone";
const SPEAKER = "teleconsult.speaker";

/** The microphone chosen on this browser, if any (a device id). */
export function chosenMicrophone() {
  return localStorage.getItem(MICROPHONE) || "";
}

/**
 * The microphone and speaker choices, and per-participant volume.
 * @param {Stage} stage @param {HTMLSelectElement} mic @param {HTMLSelectElement} out
 * @param {HTMLElement} people the participant list @param {(deviceId: string) => void} micChanged
 */
export function mountAudio(stage, mic, out, people, micChanged) {
  /** @type {Map<string, number>} participant → volume, 0..1 */
  const volumes = new Map();
  const canChooseOutput = "setSinkId" in HTMLMediaElement.prototype;
  out.disabled = !canChooseOutput;

  const list = async () => {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const fill = (/** @type {HTMLSelectElement} */ select, /** @type {string} */ kind, /** @type {string} */ chosen) => {
      select.replaceChildren(new Option(t("settings.default"), ""));
      for (const d of devices.filter((x) => x.kind === kind && x.deviceId !== "default")) {
        select.append(new Option(d.label || d.deviceId.slice(0, 8), d.deviceId, false, d.deviceId === chosen));
      }
    };
    fill(mic, "audioinput", chosenMicrophone());
    fill(out, "audiooutput", localStorage.getItem(SPEAKER) || "");
  };

  /** Every voice through the chosen speaker, at its participant's volume. */
  const apply = () => {
    const sink = localStorage.getItem(SPEAKER) || "";
    for (const view of stage.views.values()) {
      if (view.overlay) continue; // voices only
      const el = /** @type {HTMLAudioElement & {sinkId?: string, setSinkId?: (id: string) => Promise<void>}} */ (view.media);
      el.volume = volumes.get(view.participant) ?? 1;
      if (canChooseOutput && el.setSinkId && el.sinkId !== sink) el.setSinkId(sink).catch(() => {});
    }
  };

  /** A volume slider beside everyone heard. */
  const sliders = () => {
    const heard = new Set([...stage.views.values()].filter((v) => !v.overlay).map((v) => v.participant));
    for (const li of /** @type {NodeListOf<HTMLElement>} */ (people.querySelectorAll("li[data-participant]"))) {
      const who = li.dataset.participant || "";
      let slider = /** @type {HTMLInputElement | null} */ (li.querySelector("input.volume"));
      if (!heard.has(who)) {
        slider?.remove();
        continue;
      }
      if (!slider) {
        const input = document.createElement("input");
        input.type = "range";
        input.className = "volume";
        input.min = "0";
        input.max = "100";
        input.addEventListener("input", () => {
          volumes.set(who, Number(input.value) / 100);
          apply();
        });
        li.append(input);
        slider = input;
      }
      slider.value = String(Math.round(100 * (volumes.get(who) ?? 1)));
      const name = li.querySelector("span")?.textContent || "";
      slider.setAttribute("aria-label", t("settings.volume_of", { name }));
    }
  };

  mic.addEventListener("change", () => {
    localStorage.setItem(MICROPHONE, mic.value);
    micChanged(mic.value);
  });
  out.addEventListener("change", () => {
    localStorage.setItem(SPEAKER, out.value);
    apply();
  });
  stage.addEventListener("change", () => {
    apply();
    sliders();
  });
  new MutationObserver(sliders).observe(people, { childList: true });
  navigator.mediaDevices.addEventListener("devicechange", () => list().catch(() => {}));
  list().catch(() => {});
  return { list };
}
