"""The labels on Gradio's run history page (``/gradio_api/runs``, the footer's "Runs" link) as the app's words.

Gradio 6.31 keeps each run a page makes in the browser's localStorage, with the config of the components it read
and wrote; a ``gr.I18n`` label is there as Gradio's marker text, ``__i18n__{"__type__": "translation_metadata",
"key": "prompt"}``. The app's page translates that marker; the run history page prints a string label as it is.
``RUNS_PAGE_JS`` (in the page's head, which Gradio serves on that page too) writes each such label's words in its
place, in the language Gradio shows the page in (its ``lang`` attribute: the browser's language, or the one picked
in Gradio's Settings): Chinese for a Chinese page, English otherwise. Runs recorded before a start of this app read
the same way, as long as their labels' keys are in ``EN``. Gradio's own words on that page (its title, headings,
buttons, states, their tooltips and its confirmations), which it writes in English only, read in Chinese on a
Chinese page too.
"""

from __future__ import annotations

import json

from .i18n import EN, ZH

# Gradio's words about the run history in Chinese, on both the app's page (its Settings) and the run history page:
# entries of a JS array of [pattern, words].
HISTORY_WORDS_ZH = """[
  [/^Run history \\((\\d+)\\)$/, "运行记录（$1）"], [/^History storage$/, "记录保存位置"],
  [/^This browser$/, "此浏览器"],
  [/^Private to this device$/, "仅保存在此设备上"], [/^Save new runs to$/, "新运行记录保存到"],
  [/^Private and available only on this device$/, "私密，仅在此设备上可用"], [/^Connect a bucket$/, "连接存储桶"],
  [/^Stored in a Hugging Face bucket$/, "保存在 Hugging Face 存储桶中"], [/^Change bucket$/, "更换存储桶"],
]"""

RUNS_PAGE_JS = """
<script>
(() => {
  if (!/\\/gradio_api\\/runs\\/?$/.test(location.pathname)) return;
  const WORDS = __WORDS__, MARK = "__i18n__", root = document.documentElement;
  // Gradio's own words on this page, matched with their spaces made single; a tooltip's parts (" · ") one by one
  const GRADIO_ZH = [
    [/^Clear history$/, "清空记录"], [/^(\\d+) runs?$/, "$1 次运行"],
    [/^Inputs$/, "输入"], [/^Outputs$/, "输出"], [/^No saved output$/, "没有保存的输出"], [/^Load run$/, "载入运行"],
    [/^Delete$/, "删除"], [/^Completed$/, "已完成"], [/^Failed$/, "失败"], [/^Running$/, "运行中"],
    [/^(?:Ran )?in (.+)$/, "用时 $1"], [/^queued for (.+)$/, "排队 $1"], [/^(.+) in total$/, "共 $1"],
    [/^Load this run into the app$/, "把这次运行载入应用"],
    [/^This endpoint is not available in the current app version$/, "当前版本的应用中没有这个接口"],
    [/^No runs yet$/, "还没有运行记录"],
    [/^Use the app, then return here to load previous runs\\.$/, "先使用应用，再回到这里载入之前的运行。"],
    [/^Clear all saved runs for this app\\?$/, "清空此应用保存的全部运行记录？"],
    [/^Delete this saved run\\?$/, "删除这条保存的运行记录？"],
    [/^Loading history$/, "正在加载记录"], [/^Fetching runs from (.*)…$/, "正在从 $1 获取运行记录…"],
    [/^History unavailable$/, "无法加载记录"], [/^Try again$/, "重试"], [/^View bucket ↗$/, "查看存储桶 ↗"],
    [/^New runs will be saved to (.*)\\.$/, "新运行记录将保存到 $1。"],
    ...__HISTORY_WORDS_ZH__,
    [/^App$/, "应用"], [/^Return to the app$/, "返回应用"],
  ];
  const isZh = () => /^zh/i.test(root.lang);
  const sayZh = (english) => english.split(" · ").map((part) => {
    const single = part.replace(/\\s+/g, " "), match = GRADIO_ZH.find(([pattern]) => pattern.test(single));
    return match ? single.replace(...match) : part;
  }).join(" · ");
  // a text or tooltip said in Chinese, with its English: back in English on an English page
  const said = new WeakMap();
  const sayIn = (zh, target, now, put) => {
    const before = said.get(target), english = before && before.zh === now ? before.en : now;
    const chinese = sayZh(english), wanted = zh ? chinese : english;
    if (chinese === english) return;
    said.set(target, {en: english, zh: chinese});
    if (now !== wanted) put(wanted);
  };
  const gradios = (zh) => {
    const page = document.querySelector("[data-testid=run-history]");
    if (!page) return;
    const walker = document.createTreeWalker(page, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.parentElement.closest(".example-cell, code, time, [role=dialog]")) continue;  // values, the dialog
      const raw = node.nodeValue.trim();
      if (raw) sayIn(zh, node, raw, (words) => { node.nodeValue = node.nodeValue.replace(raw, words); });
    }
    for (const element of page.querySelectorAll("[title]:not(.example-cell *)")) {
      sayIn(zh, element, element.title, (words) => { element.title = words; });
    }
  };
  const ask = window.confirm;
  window.confirm = (message) => ask.call(window, isZh() ? sayZh(String(message)) : message);
  const keyOf = (text) => {
    if (!text.startsWith(MARK)) return null;
    try { return JSON.parse(text.slice(MARK.length))?.key ?? null; } catch (error) { return null; }
  };
  const plain = () => {
    gradios(isZh());
    const table = isZh() ? WORDS.zh : WORDS.en;
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
    new MutationObserver(plain).observe(document.body, {
      subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["title"],
    });
    new MutationObserver(plain).observe(root, {attributes: true, attributeFilter: ["lang"]});
    plain();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
</script>
""".replace("__WORDS__", json.dumps({"en": EN, "zh": ZH}, ensure_ascii=False)).replace(
    "__HISTORY_WORDS_ZH__", HISTORY_WORDS_ZH
)
