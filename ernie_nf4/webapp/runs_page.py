"""The labels on Gradio's run history page (``/gradio_api/runs``, the footer's "Runs" link) as the app's words.

Gradio 6.31 keeps each run a page makes in the browser's localStorage, with the config of the components it read
and wrote; a ``gr.I18n`` label is there as Gradio's marker text, ``__i18n__{"__type__": "translation_metadata",
"key": "prompt"}``. The app's page translates that marker; the run history page prints a string label as it is.
``RUNS_PAGE_JS`` (in the page's head, which Gradio serves on that page too) writes each such label's words in its
place, in the language Gradio shows the page in (its ``lang`` attribute: the browser's language, or the one picked
in Gradio's Settings): Chinese for a Chinese page, English otherwise. Gradio's own words on that page are English
only. Runs recorded before a start of this app read the same way, as long as their labels' keys are in ``EN``.
"""

from __future__ import annotations

import json

from .i18n import EN, ZH

RUNS_PAGE_JS = """
<script>
(() => {
  if (!/\\/gradio_api\\/runs\\/?$/.test(location.pathname)) return;
  const WORDS = __WORDS__, MARK = "__i18n__", root = document.documentElement;
  const keyOf = (text) => {
    if (!text.startsWith(MARK)) return null;
    try { return JSON.parse(text.slice(MARK.length))?.key ?? null; } catch (error) { return null; }
  };
  const plain = () => {
    const table = /^zh/i.test(root.lang) ? WORDS.zh : WORDS.en;
    for (const node of document.querySelectorAll("[data-testid=run-history] .value-label")) {
      const key = keyOf(node.textContent.trim()) ?? node.dataset.labelKey;
      const words = key && (table[key] ?? WORDS.en[key]);
      if (!words) continue;
      node.dataset.labelKey = key;
      const text = node.firstChild?.nodeType === Node.TEXT_NODE ? node.firstChild : null;
      if (text && text.nodeValue !== words) text.nodeValue = words;
      else if (!text && node.textContent !== words) node.textContent = words;
    }
  };
  const start = () => {
    new MutationObserver(plain).observe(document.body, {subtree: true, childList: true, characterData: true});
    new MutationObserver(plain).observe(root, {attributes: true, attributeFilter: ["lang"]});
    plain();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
</script>
""".replace("__WORDS__", json.dumps({"en": EN, "zh": ZH}, ensure_ascii=False))
