"""What a PE decoding loop does every few tokens: stop when the run's stop signal is set, and say how far it is.

``TokenWatch.tick(written)`` is called by the loops where they already have the count on the host: after each
token of the eager loop (which reads every token back anyway) and after each chunk of the CUDA-graphed loop (which
reads a chunk's tokens back once). A tick costs one ``is_set()`` call and, every ``PROGRESS_TOKENS`` tokens, one
``on_tokens`` call: nothing that waits for the GPU, so the graphed loop keeps its one sync per chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import GenerationCancelled

PROGRESS_TOKENS = 8  # tokens between two ``on_tokens`` calls (the graphed loop's chunks are 16: one call each)


class TokenWatch:
    """The stop signal and the progress callback of one PE call. ``cancel``: anything with ``is_set()`` (a
    ``threading.Event``); ``on_tokens(written, cap)``: told every ``PROGRESS_TOKENS`` tokens and at the end."""

    def __init__(self, cap: int, cancel=None, on_tokens: Callable[[int, int], None] | None = None):
        self.cap, self.cancel, self.on_tokens = cap, cancel, on_tokens
        self.told = 0

    def check(self) -> None:
        """Raise ``GenerationCancelled`` when the stop signal is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("stopped while the prompt enhancer was writing")

    def tick(self, written: int) -> None:
        """``written`` tokens so far: stop if asked, tell progress every ``PROGRESS_TOKENS`` tokens."""
        self.check()
        if self.on_tokens is not None and written - self.told >= PROGRESS_TOKENS:
            self.told = written
            self.on_tokens(written, self.cap)

    def finish(self, written: int) -> None:
        """The last count (EOS or the cap came); a stop signal set meanwhile still stops the run."""
        self.check()
        if self.on_tokens is not None and written != self.told:
            self.told = written
            self.on_tokens(written, self.cap)

    def stopping_criteria(self, prompt_length: int):
        """The watch as a transformers ``StoppingCriteriaList`` for ``generate``: ticks with each new token (the
        length of ``input_ids`` is known on the host: no sync), never stops a sequence itself."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        watch = self

        class _Watched(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                watch.tick(input_ids.shape[1] - prompt_length)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_Watched()])
