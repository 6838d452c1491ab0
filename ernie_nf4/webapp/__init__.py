"""The Gradio app (``python app.py``): the UI built around any object with ``ImageService``'s methods.

- ``ui``: ``build_demo(service)``: the page (``layout``, ``theme``) wired to ``handlers``;
- ``cli``: the flags (each also an ``ERNIE_NF4_*`` variable) and the launch;
- ``limits``, ``runs``: queue and per-client limits, one stop signal per run;
- ``event_values``: the values the page sends its private events, checked before Gradio reads them;
- ``clients``: who a request comes from (on a Space, the address the proxy appended) and each client's recent
  logins and uploads;
- ``outputs``, ``png_params``: saved images, and the settings they carry written and read back;
- ``history``: the browser-kept history's entries, signed by the server that made their images;
- ``run_progress``: a run's progress line and its bar (never going back);
- ``zerogpu``: the rules of Hugging Face's ZeroGPU Spaces;
- ``i18n``, ``messages``, ``examples``: the words users read.
- ``stats_view``: the Stats tab in words; ``api_page``: what the "Use via API" page says; ``runs_page``: the
  labels on Gradio's run history page ("Runs").

May import: the root modules, ``runtime``, ``serving``.
"""
