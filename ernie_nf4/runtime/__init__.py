"""Running a loaded model: the loader, the memory modes, the fast transformer and the one generation path.

- ``loader``: ``load_pipeline``, the one place a pipeline is built (``LoadedPipeline``);
- ``memory_modes``: ``MemoryMode`` and what ``auto`` picks;
- ``residency``: low-vram mode, one big model on the GPU at a time from page-locked CPU memory;
- ``memory_savers``: the text encoder's token table in CPU memory, the tiled VAE decode;
- ``fast_transformer``: the packed-token transformer forward and its compiled blocks; ``compile_ahead``: a first
  compile in a helper process;
- ``generation``: ``Generator``, the one generation path, running a request's stages:
  ``prompt`` (the prompt enhancer, the prompt cache, text encoding), ``denoising``, ``vae_decode``, each timed on a
  ``timing.StageClock`` made for the request; ``upscale``: image-to-image above the memory mode's budget, in tiles.

May import: the root modules, ``package``, ``prompt_enhancer``.
"""
