"""The page's look and keys: CSS, the Ctrl+Enter shortcut, and ``ErnieBlocks``, which launches with them and the
translations."""

from __future__ import annotations

import gradio as gr

from .i18n import I18N

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

CSS = """
#actions { align-self: stretch; }
#actions button { min-height: 44px; }
#gallery { min-height: 320px; }
/* Phone: the result comes right after the prompt and Generate, the settings below it. */
@media (max-width: 768px) {
  #main { flex-direction: column; }
  #main > .column { min-width: 0 !important; width: 100%; }
  #results { order: -1; }
  #actions.column { flex-direction: row !important; }
  #gallery { min-height: 260px; }
}
"""


class ErnieBlocks(gr.Blocks):
    """``gr.Blocks`` that launches with the app's CSS, keyboard shortcut and translations (Gradio 6 takes these in
    ``launch()``); a caller's own values win."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("css", CSS)
        kwargs.setdefault("head", KEYBOARD_JS)
        kwargs.setdefault("i18n", I18N)
        return super().launch(*args, **kwargs)
