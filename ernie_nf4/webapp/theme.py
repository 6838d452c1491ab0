"""The page's look and keys: CSS, the Ctrl+Enter shortcut, what the page tells screen readers, and ``ErnieBlocks``,
which launches with them and the translations."""

from __future__ import annotations

import json

import gradio as gr

from .i18n import EN, LANGUAGE_HEADER, ZH, preview_prefixes, translations
from .runs_page import HISTORY_WORDS_ZH, RUNS_PAGE_JS

# Ctrl+Enter / Cmd+Enter in the prompt clicks Generate (capture phase: before the textbox sees the key).
KEYBOARD_JS = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
  if (!(event.target instanceof Element) || !event.target.closest("#prompt")) return;
  event.preventDefault();
  document.querySelector("#generate")?.click();
}, true);
</script>
"""

# For screen readers: every control gets a name of its own (a gallery tile: its caption; a copy or reset button: its
# action and its field's label; a text box: its label; the swap button: what it does), and the run's progress is read
# out from a live region (at most every 2 s). Names are built from the page's own (translated) texts.
ACCESSIBILITY_JS = (
    """
<script>
(() => {
  const SWAP = __SWAP__, TABS = __TABS__;
  const isZh = () => (document.documentElement.lang || navigator.language || "en").toLowerCase().startsWith("zh");
  // Gradio's own names and tooltips for its buttons, said in Chinese on a Chinese page (as Gradio says them on a page
  // that was Chinese when they were drawn, so both can be said again in English)
  const GRADIO_ZH = {
    "Copy": "复制", "Copied": "已复制", "Reset to default value": "恢复默认值",
    "Click to upload or drop files": "点击上传或拖入文件",
    "Drop an image file here to upload": "将图像文件拖放到此处以上传",
    "Upload file": "上传文件", "Paste from clipboard": "从剪贴板粘贴", "Remove Image": "移除图像",
    "Fullscreen": "全屏", "Exit fullscreen": "退出全屏", "Exit fullscreen mode": "退出全屏", "Close": "关闭",
    "Download": "下载", "Share": "分享",
    "Clear": "清除", "detailed view of selected image": "所选图片的大图",
  };
  // the words of the Stats chart's drawing library (Vega) in its descriptions for screen readers
  const VEGA_ZH = {
    "discrete": "离散", "linear": "线性", "log": "对数", "time": "时间", "Symbol": "符号", "Gradient": "渐变",
    "fill color": "填充颜色", "stroke color": "描边颜色", "size": "大小", "shape": "形状", "opacity": "不透明度",
  };
  const vegaWords = (text) => text.split(/, and |, | and /).map((word) => VEGA_ZH[word] || word).join("、");
  const vegaValues = (text) => text.replace(/^(\\d+) values?: /, "$1 个值：").replace(/, ending with /, "……最后是 ")
    .replace(/^(\\d+) boundar(?:y|ies): /, "$1 个分界：").replace(/^values from (.*) to (.*)$/, "从 $1 到 $2");
  // Gradio's names for screen readers outside the buttons named above: a popup's close button, sliders, the footer,
  // an empty gallery, the picked image's strip
  const LABELS_ZH = [
    [/^Close$/, "关闭"], [/^number input for (.+)$/, "$1（数值）"], [/^range slider for (.+)$/, "$1（滑块）"],
    [/^Gradio footer navigation$/, "Gradio 页脚导航"], [/^Empty value$/, "空"],
    [/^Thumbnail (\\d+) of (\\d+)$/, "缩略图 $1/$2"],
    // the Stats chart's, as Vega describes it: the chart, its axes, legend and title
    [/^Vega visualization$/, "Vega 图表"],
    [/^([XY])-axis(?: titled '(.*)')? for a (\\S+) scale with (.*)$/, (_, axis, title, scale, values) =>
      `${axis} 轴${title ? `“${title}”` : ""}，${VEGA_ZH[scale] || scale}刻度，${vegaValues(values)}`],
    [/^(\\S+) legend(?: titled '(.*)')? for (.+?) with (.*)$/, (_, kind, title, channels, values) =>
      `${VEGA_ZH[kind] || kind}图例${title ? `“${title}”` : ""}，表示${vegaWords(channels)}，${vegaValues(values)}`],
    [/^Title text '(.*)'$/, "标题“$1”"], [/^Subtitle text '(.*)'$/, "副标题“$1”"],
  ];
  const ROLES_ZH = {
    "visualization": "图表", "group mark container": "分组", "rect mark container": "矩形组", "bar": "柱",
    "axis": "坐标轴", "legend": "图例", "title": "标题", "subtitle": "副标题",
  };
  const reversed = new WeakMap();  // a word table's, Chinese to English: Gradio's own Chinese on a page drawn in it
  const englishOf = (table, text) => {
    if (Array.isArray(table)) return undefined;
    if (!reversed.has(table)) reversed.set(table, Object.fromEntries(Object.entries(table).map(([e, z]) => [z, e])));
    return reversed.get(table)[text];
  };
  // a popup's title: Gradio writes its kind ("Info", "Warning", "Error") whatever title the server gives
  const POPUP_ZH = {"Info": "提示", "Warning": "注意", "Error": "错误", "Success": "完成"};
  let spoken = "", pending = null, last = 0;
  const setAttr = (element, name, value) => {
    if (element && value && element.getAttribute(name) !== value) element.setAttribute(name, value);
  };
  const fieldLabel = (element) => element.closest(".block")
    ?.querySelector("[data-testid=block-info], [data-testid=block-label]")?.textContent.trim();
  // "Copy" -> "Copy: Prompt"; a new name from Gradio is named afresh, and every name again in a new language
  const nameButton = (button, label) => {
    const current = button.getAttribute("aria-label");
    if (!label || !current) return;
    const own = current === button.dataset.named, written = own ? button.dataset.base : current;
    const base = englishOf(GRADIO_ZH, written) || written;  // a word Gradio wrote in Chinese, the page now English
    const named = isZh() ? `${GRADIO_ZH[base] || base}：${label}` : `${base}: ${label}`;
    if (own && named === current) return;
    button.dataset.base = base;
    button.dataset.named = named;
    button.setAttribute("aria-label", named);
  };
  const titlePopup = (title) => {
    const text = title.firstChild;
    if (!text || text.nodeType !== Node.TEXT_NODE) return;
    const word = text.textContent.trim(), base = word === title.dataset.titled ? title.dataset.titleBase : word;
    if (!(base in POPUP_ZH)) return;
    const titled = isZh() ? POPUP_ZH[base] : base;
    title.dataset.titleBase = base;
    title.dataset.titled = titled;
    if (word !== titled) text.textContent = `${titled} `;
  };
  // Gradio's own texts it writes in English whatever the language: the gallery's status while a run waits or
  // starts, an upload box's words when the language changes in its Settings after the box was drawn, the Settings
  // panel's own (its themes, screen recording and run history) and its popups for a file refused before it is sent;
  // matched with their spaces made single
  const TEXTS_ZH = [
    [/^Error$/, "错误"],  // the badge of a box whose upload Gradio refused
    [/^queue: (\\S+) \\|$/, "排队：$1 |"], [/^processing \\|$/, "处理中 |"], [/^Drop File Here$/, "将文件拖放到此处"],
    [/^Drop Image Here$/, "将图像拖放到此处"], [/^Click to Upload$/, "点击上传"], [/^- or -$/, "- 或 -"],
    [new RegExp(`^${TABS.en}$`), TABS.zh],  // a tab not shown since the change keeps its label (Gradio)
    [/^(\\S+) Light$/, "$1 浅色"], [/^(\\S+) Dark$/, "$1 深色"], [/^(\\S+) System$/, "$1 跟随系统"],
    [/^Progressive Web App is not enabled for this app\\. To enable it, start your Gradio app with$/,
      "此应用未启用渐进式 Web 应用。要启用它，请这样启动 Gradio 应用："],
    [/^Screen Studio allows you to record your screen and generates a video of your app .*prediction time\\.$/,
      "录屏工作室录下你的屏幕，并为应用生成一段视频：自动加入放大和缩小效果，并剪去等待生成的时间。"],
    [/^Start recording by clicking the$/, "点击下方的"], [/^Stop recording by clicking the$/, "点击演示页脚中的"],
    [/^button below and then sharing the current browser tab of your Gradio demo\\. .*generate a prediction\\.$/,
      "按钮开始录制，再共享 Gradio 演示所在的浏览器标签页，然后像平常一样使用应用。"],
    [/^button in the footer of the demo\\.$/, "按钮停止录制。"],
    [/^Start Recording$/, "开始录制"], [/^Stop Recording$/, "停止录制"],
    [/^Include automatic zoom in\\/out$/, "自动放大/缩小"], [/^Include automatic video trimming$/, "自动剪辑视频"],
    [/^Choose where new runs are saved and revisit earlier results\\.$/, "选择新运行记录存在哪里，并回看之前的结果。"],
    [/^View run history$/, "查看运行记录"], ...__HISTORY_WORDS_ZH__,
    [/^Invalid file types?: (.*)\\. Only (.*) allowed\\.$/, "文件类型无效：$1。只接受 $2。"],
    [/^File\\(s\\) exceed the maximum allowed size of (.*?): (.*)$/, "文件超过允许的最大大小 $1：$2"],
    [/^Connect history storage$/, "连接记录存储"],
    [/^Available anywhere you can access this bucket$/, "在任何能访问此存储桶的地方可用"],
    [/^Sign in with Hugging Face$/, "使用 Hugging Face 登录"], [/^Your buckets$/, "你的存储桶"],
    [/^Loading your buckets…$/, "正在加载你的存储桶…"], [/^Bucket ID$/, "存储桶 ID"],
    [/^or use another bucket$/, "或使用其他存储桶"], [/^Connect$/, "连接"],
    [/^Connecting…$/, "正在连接…"], [/^Could not connect this bucket\\.$/, "无法连接此存储桶。"],
    [/^Could not load your buckets\\.$/, "无法加载你的存储桶。"],
    [/^Sign in with Hugging Face to connect a bucket\\.$/, "使用 Hugging Face 登录后即可连接存储桶。"],
    [/^This app must enable Hugging Face OAuth before visitors can connect buckets\\.$/,
      "此应用须先启用 Hugging Face OAuth，访客才能连接存储桶。"],
    [/^You do not have write access to “(.*)”\\.$/, "你没有“$1”的写入权限。"],
    [/^You can install this app as a Progressive Web App on your device\\. Visit$/,
      "你可以把此应用安装为设备上的渐进式 Web 应用。请访问"],
    [/^and click the install button in the URL address bar of your browser\\.$/,
      "，然后点击浏览器地址栏中的安装按钮。"],
  ];
  // Gradio's own words as it writes them on a Chinese page, which stay on a box or tab drawn before the page turned
  // English: an upload box's, a refused upload's badge, a tab not shown since
  const GRADIO_WROTE_ZH = {
    "将文件拖放到此处": "Drop File Here", "将图像拖放到此处": "Drop Image Here", "点击上传": "Click to Upload",
    "- 或 -": "- or -", "错误": "Error", [TABS.zh]: TABS.en,
  };
  const sayTexts = (root, zh) => {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const own = node.__zh, raw = node.nodeValue.trim(), wrote = GRADIO_WROTE_ZH[raw.replace(/\\s+/g, " ")];
      if (!zh && !own && !wrote) continue;  // an English page: only a text said in Chinese before goes back
      const gradios = own && own.zh === raw ? own.en : wrote || raw;  // as Gradio writes it in English
      const english = gradios.replace(/\\s+/g, " ");
      const match = TEXTS_ZH.find(([pattern]) => pattern.test(english));
      if (!match) continue;
      const said = zh ? english.replace(...match) : gradios;  // back in English: its own spaces (&nbsp;) too
      node.__zh = {en: gradios, zh: said};
      if (raw !== said) node.nodeValue = node.nodeValue.replace(raw, said);  // the spaces around it kept
    }
  };
  // an attribute Gradio writes in English (``name`` of ``element``), said by ``table`` (a word table or patterns);
  // back in English on an English page; Gradio's new value is said afresh
  const saidAttrs = new WeakMap();
  const sayAttr = (element, name, table, zh) => {
    const said = saidAttrs.get(element) || {}, current = element.getAttribute(name);
    const base = said[name] && current === said[name].said ? said[name].base : englishOf(table, current) || current;
    const match = !base ? null : Array.isArray(table) ? table.find(([pattern]) => pattern.test(base))
      : base in table ? [base, table[base]] : null;
    if (!match) return;
    said[name] = {base, said: zh ? base.replace(...match) : base};
    saidAttrs.set(element, said);
    if (current !== said[name].said) element.setAttribute(name, said[name].said);
  };
  const say = (live) => {
    pending = null; last = Date.now();
    const tracker = document.querySelector("#gallery [data-testid=status-tracker]");
    const text = tracker && !tracker.classList.contains("hide") ? tracker.innerText.replace(/\\s+/g, " ").trim() : "";
    if (text !== spoken) live.textContent = spoken = text;
  };
  const update = (live) => {
    for (const tile of document.querySelectorAll("#gallery .thumbnail-item, #history .thumbnail-item")) {
      const caption = tile.querySelector(".caption-label")?.textContent.trim();
      setAttr(tile.querySelector("img"), "alt", caption);
      setAttr(tile, "aria-label", caption && `${fieldLabel(tile)}: ${caption}`);
    }
    for (const area of document.querySelectorAll(".block textarea")) setAttr(area, "aria-label", fieldLabel(area));
    for (const button of document.querySelectorAll(".block button[aria-label]:not(.thumbnail-item)")) {
      nameButton(button, fieldLabel(button));
    }
    const zh = isZh();
    for (const button of document.querySelectorAll("button[title]")) sayAttr(button, "title", GRADIO_ZH, zh);
    for (const title of document.querySelectorAll("[data-testid=toast-body] .toast-title")) titlePopup(title);
    const texts = "[data-testid=status-tracker], [data-testid=upload-text], [role=tab], .tab-container button, " +
      "div[role=dialog], " +
      "[data-testid=toast-body]";
    for (const root of document.querySelectorAll(texts)) sayTexts(root, zh);
    for (const img of document.querySelectorAll("div[role=dialog] img[alt]")) sayAttr(img, "alt", TEXTS_ZH, zh);
    for (const element of document.querySelectorAll("[aria-label]")) sayAttr(element, "aria-label", LABELS_ZH, zh);
    for (const element of document.querySelectorAll("[aria-roledescription]")) {
      sayAttr(element, "aria-roledescription", ROLES_ZH, zh);
    }
    const swapName = SWAP[zh ? "zh" : "en"];
    setAttr(document.querySelector("#swap"), "aria-label", swapName);
    setAttr(document.querySelector("#swap"), "title", swapName);
    if (pending === null) pending = setTimeout(() => say(live), Math.max(0, 2000 - (Date.now() - last)));
  };
  const start = () => {
    const live = document.createElement("div");
    live.id = "progress-live";
    live.className = "visually-hidden";
    live.setAttribute("role", "status");
    live.setAttribute("aria-live", "polite");
    document.body.appendChild(live);
    new MutationObserver(() => update(live)).observe(document.body, {
      subtree: true, childList: true, characterData: true, attributes: true,
      attributeFilter: ["aria-label", "aria-roledescription", "alt", "class", "title"],
    });
    update(live);
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
</script>
""".replace("__SWAP__", json.dumps({"en": EN["swap"], "zh": ZH["swap"]}, ensure_ascii=False))
    .replace("__TABS__", json.dumps({"en": EN["tab_stats"], "zh": ZH["tab_stats"]}, ensure_ascii=False))
    .replace("__HISTORY_WORDS_ZH__", HISTORY_WORDS_ZH)
)

# The page's language (Gradio's: the browser's, or the one picked in Gradio's Settings, which Gradio puts in the
# page's lang attribute; any language but Chinese is English, as the app's words are) goes with each of the page's
# requests to the server in a header of its own, for the texts the server writes (``i18n.language``): one tab's
# choice is its own, also in a frame (a Hugging Face Space). A change clicks the hidden #relang button, whose events
# write again the server's texts already on the page.
LANGUAGE_JS = """
<script>
(() => {
  const root = document.documentElement;
  const plain = window.fetch.bind(window);
  window.fetch = (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    let own = false;
    try { own = new URL(url, location.href).origin === location.origin; } catch (error) { own = false; }
    if (!own || !root.lang) return plain(input, init);
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    headers.set("__HEADER__", root.lang);
    return plain(input, {...init, headers});
  };
  let shown = null;
  const follow = () => {
    if (root.lang && !/^(zh|en)/i.test(root.lang)) { root.lang = "en"; return; }
    if (shown !== null && root.lang !== shown) document.querySelector("#relang")?.click();
    shown = root.lang;
  };
  new MutationObserver(follow).observe(root, {attributes: true, attributeFilter: ["lang"]});
  follow();
})();
</script>
""".replace("__HEADER__", LANGUAGE_HEADER)

# An upload the server refuses (too many from one address, too large, uploads off): Gradio's popup reads "HTTP 429: "
# and the answer's JSON; the page shows the answer's sentence (its ``error``, else ``detail``), which the server wrote
# in the page's language.
UPLOAD_REFUSAL_JS = """
<script>
(() => {
  const plain = (node) => {
    const match = /^HTTP \\d{3}: (\\{.*\\})$/s.exec(node.textContent.trim());
    if (!match) return;
    let answer = null;
    try { answer = JSON.parse(match[1]); } catch (error) { return; }
    const said = [answer?.error, answer?.detail].find((text) => typeof text === "string" && text.trim());
    if (said) node.textContent = said;
  };
  const start = () => new MutationObserver(() => {
    for (const node of document.querySelectorAll("[data-testid=toast-text]")) plain(node);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
</script>
"""

CSS = """
#actions { align-self: stretch; }
#actions button { min-height: 44px; }
#gallery { min-height: 320px; }
/* A live preview (captioned "Preview · step k/n") shows through the progress over the gallery: the cover is clear,
   the progress text and bar sit at the bottom on a band of their own. An earlier result stays covered. */
#gallery:has(__PREVIEW__) [data-testid=status-tracker].wrap {
  background: transparent; justify-content: flex-end; padding-bottom: var(--size-4) !important;
}
/* Gradio's timer restarts at each preview: hidden while one shows (the progress text says the time elapsed) */
#gallery:has(__PREVIEW__) [data-testid=status-tracker] .progress-text {
  visibility: hidden;
}
#gallery:has(__PREVIEW__) [data-testid=status-tracker] .progress-level {
  background: color-mix(in srgb, var(--block-background-fill) 85%, transparent); border-radius: var(--radius-md);
  padding: var(--size-2) var(--size-3);
}
/* A refusal on the start image (too small, too large) shows under its box's buttons (Fullscreen, Remove Image),
   never over them: the image can still be taken away. */
#init-image [data-testid=status-tracker] .validation-error {
  top: var(--size-8); border-top: 1px solid var(--error-border-color); border-radius: var(--radius-sm);
}
#swap { align-self: center; min-height: 40px; font-size: 1.25rem; }
#dimensions { flex-wrap: nowrap; }
/* Results and history: each image whole, at its own aspect (no cropping), its caption whole under it. */
#gallery .grid-container, #history .grid-container { align-items: start; grid-auto-rows: auto; }
#gallery .thumbnail-lg, #history .thumbnail-lg {
  aspect-ratio: auto; height: auto; display: flex; flex-direction: column; align-items: center;
}
#gallery .thumbnail-lg > img, #history .thumbnail-lg > img {
  width: auto; height: auto; max-width: 100%; object-fit: contain; min-width: 32px; min-height: 32px;
}
#gallery .thumbnail-lg > img { max-height: 70vh; }
/* A live preview is an eighth of the image's size: drawn across the gallery, as large as a result at the default
   size shows, its pixels smoothed. */
#gallery .thumbnail-lg > :is(__PREVIEW__) { width: 100%; object-fit: contain; image-rendering: auto; }
#gallery .grid-wrap.fixed-height { min-height: 0; max-height: none; }
#history .thumbnail-lg > img { max-height: 160px; }
#gallery .caption-label, #history .caption-label {
  position: static; max-width: 100%; width: 100%; white-space: normal; overflow-wrap: anywhere; opacity: 1;
  border: none; border-radius: 0;
}
#revised textarea { overflow-y: auto; }
/* Stats' tables: no word or number broken across lines (a narrow screen scrolls the table sideways, not the page) */
#stats table { display: block; max-width: 100%; overflow-x: auto; }
#stats :is(td, th) { word-break: keep-all; overflow-wrap: normal; }
#stats :is(td, th):not(:first-child) { white-space: nowrap; }
#relang, #restore-given { display: none !important; }
/* The Stats chart's hover box (Vega's, fixed to the window) is at most half the window wide, and as wide wherever it
   is: Vega puts it right or left of the pointer, on the first side where it fits, and such a box fits one of them
   wherever the pointer is. A wider one can fit neither on a phone, and Vega then puts it past the screen's left
   edge. */
#vg-tooltip-element { box-sizing: border-box; width: max-content; max-width: calc(50vw - 20px); }
#vg-tooltip-element td { overflow-wrap: anywhere; }
.visually-hidden {
  position: absolute !important; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap;
}
/* Phone: the result comes right after the prompt and Generate/Stop (side by side), then the examples, then the
   settings; touch targets of at least 24 px. */
@media (max-width: 768px) {
  #main { flex-direction: column; }
  #main > .column { min-width: 0 !important; width: 100%; }
  #results { order: -1; }
  #actions.column { flex-direction: row !important; flex-wrap: nowrap !important; }
  #actions.column > button { flex: 1 1 0; min-width: 0 !important; }
  #gallery { min-height: 200px; }
  #settings > #examples { order: -1; }
  input[type=checkbox] { width: 24px !important; height: 24px !important; }
  .icon-button, .reset-button { min-width: 24px !important; min-height: 24px !important; }
  .tab-like-container { height: 28px !important; }
  #advanced > .label-wrap { min-height: 32px; }
  #img2img > .label-wrap { min-height: 32px; }
  input[type=range] { height: 24px !important; }
  input[type=range]::-webkit-slider-thumb {
    width: 24px !important; height: 24px !important; margin-top: -8px !important;
  }
  input[type=range]::-moz-range-thumb { width: 24px !important; height: 24px !important; }
  #preset input { min-height: 24px; }
}
""".replace("__PREVIEW__", ", ".join(f'img[alt^="{prefix}"]' for prefix in preview_prefixes()))


class ErnieBlocks(gr.Blocks):
    """``gr.Blocks`` that launches with the app's CSS, keyboard shortcut, screen-reader help and translations (also
    on Gradio's run history page: ``runs_page``; Gradio 6 takes these in ``launch()``); a caller's own values win."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("css", CSS)
        kwargs.setdefault("head", KEYBOARD_JS + ACCESSIBILITY_JS + LANGUAGE_JS + UPLOAD_REFUSAL_JS + RUNS_PAGE_JS)
        kwargs.setdefault("i18n", translations())
        return super().launch(*args, **kwargs)
