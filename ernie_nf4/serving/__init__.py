"""Serving requests: a package fetched lazily, loaded once, shared by the app's requests.

- ``provider``: a local folder, else a download, else a build;
- ``service``: ``ImageService``, one lock per GPU, progress and stats;
- ``loras``: the LoRAs an app offers by name, and getting their files (local, or through the Hugging Face cache);
- ``compiling``: whether and when the transformer blocks compile, decided from the setting and the loaded pipeline;
- ``replicas``: one service per GPU behind the same methods.

May import: the root modules, ``package``, ``build``, ``runtime``, ``synthetic``.
"""
