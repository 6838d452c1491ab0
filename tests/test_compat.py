"""The private upstream attributes this project uses exist in the pinned versions, and each fallback computes what
the upstream attribute computes (so a release that drops one changes speed, never results)."""

import logging

import torch
from diffusers import ErnieImagePipeline

from ernie_nf4 import compat


def test_every_private_attribute_used_is_there():
    assert compat.upstream_problems() == []


class _Without:
    """Stands for a pipeline class of a diffusers release without the private helpers."""

    class transformer:  # noqa: N801 - mirrors pipe.transformer.config
        class config:  # noqa: N801
            text_in_dim = 8


def test_the_fallbacks_compute_what_diffusers_computes(caplog):
    latents = torch.randn(2, 128, 4, 6)
    with caplog.at_level(logging.WARNING, logger="ernie_nf4.compat"):
        ours = compat.unpatchify_latents(_Without(), latents)
    assert torch.equal(ours, ErnieImagePipeline._unpatchify_latents(latents))
    texts = [torch.randn(5, 8), torch.randn(3, 8)]
    padded, lengths = compat.pad_text(_Without(), texts, "cpu", torch.float32)
    expected, expected_lengths = ErnieImagePipeline._pad_text(texts, "cpu", torch.float32, 8)
    assert torch.equal(padded, expected) and torch.equal(lengths, expected_lengths)
    assert "upstream changed" in caplog.text


def test_the_fast_path_check_names_what_is_missing(monkeypatch):
    from diffusers.models.transformers import transformer_ernie_image as module

    assert compat.fast_path_problem() is None
    monkeypatch.delattr(module, "ErnieImageSharedAdaLNBlock")
    assert compat.fast_path_problem() == "diffusers lacks ErnieImageSharedAdaLNBlock"
