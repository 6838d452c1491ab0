import pytest
import torch

from ernie_nf4.prompt_enhancer.decoding import (
    PEDecoder,
    decode_one_token,
    generate_tokens,
    model_parts,
    prefill,
)

from .support.fixtures import DEVICE

PROMPTS = ([1, 5, 77, 300, 12, 44, 9], [1, 8, 8, 9])
SAMPLING = dict(do_sample=True, temperature=0.6, top_p=0.95, pad_token_id=0)


@pytest.fixture(scope="module")
def tiny_pe(tiny_package, nf4_everywhere):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_package / "pe", dtype=torch.bfloat16, device_map={"": DEVICE})


def eager_generate(pe, ids, max_new_tokens, seed, eos_token_id=None, **extra):
    """The stock sampling (``runtime.prompt.sample_with_generate``): ``torch.manual_seed(seed)`` inside
    ``fork_rng``, then eager ``generate``."""
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        out = pe.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            **SAMPLING,
            **extra,
        )
    return out[0, ids.shape[1] :].cpu()


def as_ids(prompt):
    return torch.tensor([prompt], device=DEVICE)


@pytest.mark.parametrize("seed", [0, 7, 123456789])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_eager_loop_samples_exactly_the_tokens_of_eager_generate(tiny_pe, prompt, seed):
    decoder = PEDecoder(tiny_pe, graphs=False)
    tokens, stopped = decoder.generate(as_ids(prompt), 30, seed)
    assert torch.equal(tokens, eager_generate(tiny_pe, as_ids(prompt), 30, seed))
    assert len(tokens) == 30 and not stopped


def test_same_seed_same_tokens_other_seed_other_tokens_and_callers_random_state_untouched(tiny_pe):
    decoder = PEDecoder(tiny_pe, graphs=False)
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    first, _ = decoder.generate(as_ids(PROMPTS[0]), 20, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    again, _ = decoder.generate(as_ids(PROMPTS[0]), 20, seed=5)
    other, _ = decoder.generate(as_ids(PROMPTS[0]), 20, seed=6)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_stops_at_eos_and_says_so_like_generate(tiny_pe):
    free, stopped = generate_tokens(tiny_pe, as_ids(PROMPTS[1]), 24, seed=3, decoder=PEDecoder(tiny_pe, graphs=False))
    assert not stopped
    eos = int(free[9])  # a token it writes at step 10 (perhaps earlier too): make it the EOS
    cut = free.tolist().index(eos) + 1
    tokens, stopped = generate_tokens(tiny_pe, as_ids(PROMPTS[1]), 24, seed=3, eos_token_id=[eos, 10_000])
    assert stopped and tokens.tolist() == free.tolist()[:cut]
    assert torch.equal(tokens, eager_generate(tiny_pe, as_ids(PROMPTS[1]), 24, seed=3, eos_token_id=eos))


def test_respects_max_new_tokens_and_reports_the_cap(tiny_pe):
    decoder = PEDecoder(tiny_pe, graphs=False)
    for cap in (1, 2, 17):
        tokens, stopped = decoder.generate(as_ids(PROMPTS[0]), cap, seed=1, eos_token_id=10_000)
        assert len(tokens) == cap and not stopped


def test_cache_is_sized_once_and_grows_for_a_long_request(tiny_pe):
    decoder = PEDecoder(tiny_pe, graphs=False, cache_tokens=64)
    decoder.generate(as_ids(PROMPTS[0]), 8, seed=1)
    cache = decoder.cache
    decoder.generate(as_ids(PROMPTS[1]), 8, seed=1)
    assert decoder.cache is cache and cache.length == 256
    tokens, _ = decoder.generate(as_ids(PROMPTS[1]), 300, seed=1)
    assert decoder.cache.length == 512 and len(tokens) == 300


def test_masked_whole_cache_step_matches_the_exact_step(tiny_pe):
    """The graph-safe step (whole cache under a mask) computes the same logits as the exact one, up to rounding."""
    from ernie_nf4.prompt_enhancer.decoding import StaticKV

    parts = model_parts(tiny_pe)
    ids = as_ids(PROMPTS[0])
    with torch.no_grad():
        cache = StaticKV(parts, 64, torch.bfloat16, ids.device)
        prefill(parts, ids, cache)
        position = torch.tensor([ids.shape[1]], device=ids.device)
        token = torch.tensor([[42]], device=ids.device)
        exact = decode_one_token(parts, token, position, cache, exact=True)
        masked = decode_one_token(parts, token, position, cache, exact=False)
    torch.testing.assert_close(masked, exact, atol=0.05, rtol=0.02)


def test_a_generation_config_with_other_processors_decodes_with_generate(tiny_pe, caplog):
    import copy

    config = copy.deepcopy(tiny_pe.generation_config)
    tiny_pe.generation_config.repetition_penalty = 1.3
    try:
        tokens, _ = PEDecoder(tiny_pe, graphs=False).generate(as_ids(PROMPTS[0]), 12, seed=2)
        assert torch.equal(tokens, eager_generate(tiny_pe, as_ids(PROMPTS[0]), 12, seed=2))
    finally:
        tiny_pe.generation_config = config


def test_bad_arguments_are_refused_by_name(tiny_pe):
    decoder = PEDecoder(tiny_pe, graphs=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate(as_ids(PROMPTS[0]), 0, seed=1)
    with pytest.raises(ValueError, match="input_ids"):
        decoder.generate(torch.tensor([[1, 2], [3, 4]], device=DEVICE), 4, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        decoder.generate(as_ids(PROMPTS[0]), 4, seed=1, temperature=0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        PEDecoder(tiny_pe, chunk_tokens=0)
    with pytest.raises(ValueError, match="graphs=True"):
        PEDecoder(tiny_pe, graphs=False, triton_kernels=True)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kernels", [(False, False), (True, False), (True, True)])
def test_graphed_loop_is_reproducible_and_follows_eager_decoding(tiny_pe, kernels):
    fused, gemv = kernels
    graphed = PEDecoder(tiny_pe, graphs=True, triton_kernels=fused, triton_gemv=gemv, chunk_tokens=4)
    eager = PEDecoder(tiny_pe, graphs=False)
    for prompt in PROMPTS:
        tokens, _ = graphed.generate(as_ids(prompt), 21, seed=11)
        assert graphed.broken is None and graphed.captures == 1  # a second prompt reuses the graph
        assert torch.equal(graphed.generate(as_ids(prompt), 21, seed=11)[0], tokens)
        reference, _ = eager.generate(as_ids(prompt), 21, seed=11)
        assert len(tokens) == 21
        # without the fused kernels the first token comes from the same (eager) prefill; later ones, and with them
        # (a fused prefill: test below) the first too, may part ways where rounding flips a near tie (the tiny
        # random PE has many)
        if not fused:
            assert tokens[0] == reference[0]


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="Triton kernels need a GPU")
def test_a_failing_fused_prefill_falls_back_to_the_exact_one_and_keeps_the_graph(tiny_pe, caplog, monkeypatch):
    from ernie_nf4.prompt_enhancer.kernels import nf4_gemv

    fused = PEDecoder(tiny_pe, graphs=True, chunk_tokens=4)
    exact = PEDecoder(tiny_pe, graphs=True, chunk_tokens=4)
    exact.fused_prefill = False
    expected, _ = exact.generate(as_ids(PROMPTS[0]), 12, seed=3)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(nf4_gemv, "nf4_dequantize", broken)
    tokens, _ = fused.generate(as_ids(PROMPTS[0]), 12, seed=3)
    assert "fused prefill failed (RuntimeError: no kernel image" in caplog.text
    assert fused.broken is None and fused.captures == 1 and not fused.fused_prefill  # still graphed
    assert torch.equal(tokens, expected)  # the exact prefill's tokens, as from a decoder that never fused it
    monkeypatch.undo()
    assert torch.equal(fused.generate(as_ids(PROMPTS[0]), 12, seed=3)[0], expected)  # given up for good


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="Triton kernels need a GPU")
def test_fused_prefill_writes_the_cache_and_logits_of_the_exact_one(monkeypatch):
    """The graphed path's prompt runs through nf4_gemv's kernels (dequantize + dense products, norms, rotary + cache
    write, SiLU): the same keys, values and logits as the exact prefill up to bf16 rounding, on the full PE's
    shapes (32 heads of 128 over 8 key/value heads, NF4 3072 x 9216, the query scale of its rope settings)."""
    from transformers import Ministral3Config, Ministral3ForCausalLM

    from ernie_nf4.prompt_enhancer.decoding import StaticKV
    from ernie_nf4.prompt_enhancer.kernels import nf4_gemv

    from .test_nf4_gemv import nf4_linear

    dequantize = nf4_gemv.nf4_dequantize
    config = Ministral3Config(
        hidden_size=3072,
        intermediate_size=9216,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=1024,
        rope_parameters={  # the full PE's, but scaling from position 16 on (its query scale then varies here)
            "rope_type": "yarn",
            "type": "yarn",
            "rope_theta": 1e6,
            "factor": 16.0,
            "original_max_position_embeddings": 16,
            "llama_4_scaling_beta": 0.1,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        tie_word_embeddings=True,
    )
    torch.manual_seed(8)
    with torch.device("cuda"):
        pe = Ministral3ForCausalLM(config).to(torch.bfloat16).eval()
    for layer in pe.model.layers:
        for parent, names in (
            (layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (layer.mlp, ("gate_proj", "up_proj", "down_proj")),
        ):
            for name in names:
                dense = getattr(parent, name)
                setattr(parent, name, nf4_linear(dense.out_features, dense.in_features))
    parts = model_parts(pe)
    assert parts is not None and parts.attn_scale_beta == 0.1
    ids = torch.randint(0, 1024, (1, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    dequantized = []
    monkeypatch.setattr(nf4_gemv, "nf4_dequantize", lambda *a, **k: dequantized.append(a) or dequantize(*a, **k))
    with torch.no_grad():
        exact_cache, fused_cache = (StaticKV(parts, 64, torch.bfloat16, ids.device) for _ in range(2))
        exact = prefill(parts, ids, exact_cache)
        fused = prefill(parts, ids, fused_cache, fused=True)
    assert fused.shape == exact.shape == (1, 1024)
    for exact_part, fused_part in zip(
        exact_cache.keys + exact_cache.values, fused_cache.keys + fused_cache.values, strict=True
    ):
        assert fused_part[:, :, 40:].abs().max() == 0  # nothing written past the prompt
        torch.testing.assert_close(fused_part, exact_part, atol=0.06, rtol=0.02)
    torch.testing.assert_close(fused, exact, atol=0.06, rtol=0.02)
    assert len(dequantized) == 2 * 7  # every NF4 product of the fused prompt: none went through bitsandbytes


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_graphed_loop_captures_again_after_a_low_vram_move(tiny_pe):
    from ernie_nf4.runtime.residency import Residency

    decoder = PEDecoder(tiny_pe, graphs=True, chunk_tokens=4)
    before, _ = decoder.generate(as_ids(PROMPTS[0]), 12, seed=4)
    residency = Residency(DEVICE)
    residency.add("pe", tiny_pe)
    try:
        residency.use("pe")
        after, _ = decoder.generate(as_ids(PROMPTS[0]), 12, seed=4)
        assert decoder.captures == 2 and torch.equal(after, before)
    finally:
        residency.use("pe")  # leave it on the GPU for the other tests


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_a_failing_capture_falls_back_to_generate(tiny_pe, caplog, monkeypatch):
    import ernie_nf4.prompt_enhancer.decoding as pe_decoding

    def broken(*args, **kwargs):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(pe_decoding, "_Graph", broken)
    decoder = PEDecoder(tiny_pe, graphs=True)
    tokens, _ = decoder.generate(as_ids(PROMPTS[0]), 10, seed=8)
    assert decoder.broken and "capture failed" in caplog.text
    assert torch.equal(tokens, eager_generate(tiny_pe, as_ids(PROMPTS[0]), 10, seed=8))


@pytest.mark.parametrize("top_p", [0.95, 1.0])
def test_top_k_first_sampling_picks_the_tokens_full_sampling_picks(top_p):
    from ernie_nf4.prompt_enhancer.decoding import Sampling, sample_token, sample_token_topk_first

    generator = torch.Generator().manual_seed(5)
    sampling = Sampling(temperature=0.6, top_k=50, top_p=top_p)
    picked = []
    for _ in range(300):
        logits = torch.randn(1, 4096, generator=generator) * 3
        noise = torch.empty(1, 4096).exponential_(generator=generator)
        full = sample_token(logits, noise, sampling)
        fast = sample_token_topk_first(logits, noise, sampling)
        assert fast.shape == full.shape == (1,)
        picked.append(int(fast))
        assert torch.equal(fast, full)
    assert len(set(picked)) > 100  # it samples, it does not always take the best logit


def test_another_thread_resetting_the_global_random_state_midway_changes_no_token(tiny_pe):
    """Dynamo restores the process's random state when a compile (the transformer's, in the background) ends; a
    decode running meanwhile must not draw from it."""
    decoder = PEDecoder(tiny_pe, graphs=False)
    expected, _ = decoder.generate(as_ids(PROMPTS[0]), 20, seed=21)

    def reset(_module, _inputs):  # stands in for the other thread, once per decode step
        torch.manual_seed(777)

    hook = model_parts(tiny_pe).embed.register_forward_pre_hook(reset)
    try:
        tokens, _ = decoder.generate(as_ids(PROMPTS[0]), 20, seed=21)
    finally:
        hook.remove()
    assert torch.equal(tokens, expected)
    assert torch.equal(expected, eager_generate(tiny_pe, as_ids(PROMPTS[0]), 20, seed=21))  # still generate's draws


@pytest.mark.cuda
def test_the_prompt_goes_to_the_gpu_without_waiting_for_work_queued_before_it():
    """In low-vram the PE's own move is still copying when its prompt goes to the GPU: that copy must not wait for it
    (a copy from pageable memory would). ``set_sync_debug_mode("error")`` raises at any call that waits."""
    from ernie_nf4.prompt_enhancer.decoding import _to_device

    ids = torch.tensor([[1, 5, 77, 300, 12]])
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            ids.to("cuda")  # what it replaced waits: the check does catch it
        on_gpu = _to_device(ids, torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), ids)
    assert _to_device(ids, torch.device("cpu")) is ids  # on the CPU nothing moves


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_the_graphed_loop_reports_each_chunk_and_stops_within_one_without_another_sync(tiny_pe):
    """The watch ticks where the host has just read a chunk's tokens back: no sync of its own, a stop within one
    chunk, and the decoder's cache and graph still good for the next call."""
    import threading
    import warnings

    from ernie_nf4.errors import GenerationCancelled
    from ernie_nf4.prompt_enhancer.watch import TokenWatch

    decoder = PEDecoder(tiny_pe, graphs=True, chunk_tokens=16)
    expected, _ = decoder.generate(as_ids(PROMPTS[0]), 100, seed=3)
    reported = []
    tokens, _ = decoder.generate(
        as_ids(PROMPTS[0]), 100, seed=3, watch=TokenWatch(100, threading.Event(), lambda d, c: reported.append(d))
    )
    assert torch.equal(tokens, expected)
    assert reported == [17, 33, 49, 65, 81, 97, 100]

    cancel, reported = threading.Event(), []

    def stop_at_33(done, cap):
        reported.append(done)
        if done >= 33:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        decoder.generate(as_ids(PROMPTS[0]), 100, seed=3, watch=TokenWatch(100, cancel, stop_at_33))
    assert reported == [17, 33]
    assert torch.equal(decoder.generate(as_ids(PROMPTS[0]), 100, seed=3)[0], expected)
    assert decoder.broken is None  # a stop is no failure of the graph: no fallback to generate

    def syncs(watch=None):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                decoder.generate(as_ids(PROMPTS[0]), 100, seed=3, watch=watch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len(caught)

    assert syncs(TokenWatch(100, threading.Event(), lambda d, c: None)) == syncs()
