// Strings from locale files (locales/<lang>.json); English and Simplified Chinese.

export const LANGUAGES = { en: "English", "zh-CN": "简体中文" };

/** @type {Record<string, string>} */
let strings = {};
/** @type {Record<string, string>} */
let fallback = {};
let current = "en";

/** The language to use: the one chosen before, else the browser's. */
export function pickLanguage() {
  const chosen = localStorage.getItem("teleconsult.lang");
  if (chosen && chosen in LANGUAGES) return chosen;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

/** Load a language's strings (English fills any gap). @param {string} lang */
export async function setLanguage(lang) {
  if (!(lang in LANGUAGES)) lang = "en";
  const load = async (/** @type {string} */ l) => (await fetch(`/locales/${l}.json`)).json();
  fallback = Object.keys(fallback).length ? fallback : await load("en");
  strings = lang === "en" ? fallback : await load(lang);
  current = lang;
  localStorage.setItem("teleconsult.lang", lang);
  document.documentElement.lang = lang;
  translate(document);
}

/** The current language. */
export function language() {
  return current;
}

/**
 * A string by key, with {name} placeholders filled.
 * @param {string} key @param {Record<string, string | number>} [params]
 */
export function t(key, params = {}) {
  const text = strings[key] ?? fallback[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => String(params[k] ?? `{${k}}`));
}

/** Translate elements marked data-i18n (text), data-i18n-title, -label and -placeholder. @param {ParentNode} root */
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(/** @type {HTMLElement} */ (el).dataset.i18n || "");
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.setAttribute("title", t(/** @type {HTMLElement} */ (el).dataset.i18nTitle || ""));
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(/** @type {HTMLElement} */ (el).dataset.i18nLabel || ""));
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.setAttribute("placeholder", t(/** @type {HTMLElement} */ (el).dataset.i18nPlaceholder || ""));
}
