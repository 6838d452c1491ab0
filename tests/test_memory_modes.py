import gc

import numpy as np
import pytest
import torch

from ernie_nf4.errors import EnvironmentUnsupported
from ernie_nf4.prompt_enhancer.decoding import tensor_fingerprint
from ernie_nf4.request import GenerationRequest
from ernie_nf4.runtime.generation import Generator
from ernie_nf4.runtime.loader import load_pipeline
from ernie_nf4.runtime.memory_modes import MemoryMode
from ernie_nf4.runtime.residency import Residency

from .support.fixtures import DEVICE, HAS_CUDA
from .support.fixtures import model_tensors as tensors

pytestmark = pytest.mark.nf4
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="low-vram moves models between CPU and a CUDA GPU")


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@torch.no_grad()
def test_residency_keeps_one_model_on_the_device_and_outputs_unchanged(tiny_package, nf4_everywhere):
    from transformers import AutoModel, AutoModelForCausalLM

    kwargs = {"dtype": torch.bfloat16, "device_map": {"": DEVICE}}
    models = {
        "pe": AutoModelForCausalLM.from_pretrained(tiny_package / "pe", **kwargs),
        "text_encoder": AutoModel.from_pretrained(tiny_package / "text_encoder", **kwargs),
    }
    ids = torch.tensor([[1, 5, 77, 300, 12]], device=DEVICE)

    def outputs():
        return {
            "pe": models["pe"](input_ids=ids).logits,
            "text_encoder": models["text_encoder"](input_ids=ids, output_hidden_states=True).hidden_states[-2],
        }

    before = outputs()  # on a CPU, bitsandbytes repacks its weights in the first forward: before the copies
    residency = Residency(DEVICE)
    for name, model in models.items():
        residency.add(name, model)
    assert residency.resident is None and residency.bytes("pe") > 0
    addresses = {}
    for name in ("pe", "text_encoder", "pe", "text_encoder"):
        residency.use(name)
        assert residency.resident == name
        # the same addresses every time, quantization states included (what keeps the PE's CUDA graph valid)
        fingerprint = tensor_fingerprint(models[name])
        assert addresses.setdefault(name, fingerprint) == fingerprint
        assert len(fingerprint) > len([*models[name].parameters(), *models[name].buffers()])
        if name == "pe":
            out = models[name](input_ids=ids).logits
        else:
            out = models[name](input_ids=ids, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(out, before[name])
        if HAS_CUDA:
            other = "text_encoder" if name == "pe" else "pe"
            assert all(t.device.type == "cuda" for t in tensors(models[name]))
            assert all(t.device.type == "cpu" and t.is_pinned() for t in tensors(models[other]))
    with pytest.raises(ValueError, match=r"name must be one of \('pe', 'text_encoder'\), got 'vae'"):
        residency.use("vae")
    residency.release()
    assert residency.resident is None


def test_low_vram_needs_a_gpu(tiny_package, nf4_everywhere):
    if HAS_CUDA:
        pytest.skip("this machine has a GPU")
    with pytest.raises(
        EnvironmentUnsupported, match="memory_mode 'low-vram' needs a CUDA GPU .* use memory_mode 'all-on-gpu'"
    ):
        load_pipeline(tiny_package, device="cpu", memory_mode="low-vram")


def test_bad_loader_and_residency_arguments_are_refused_by_name(tiny_package, nf4_everywhere):
    with pytest.raises(
        ValueError, match=r"memory_mode must be one of \['auto', 'all-on-gpu', 'low-vram', 'model-offload'\]"
    ):
        load_pipeline(tiny_package, device=DEVICE, memory_mode="tiny")
    with pytest.raises(ValueError, match=r"compile needs fast=True"):
        load_pipeline(tiny_package, device=DEVICE, fast=False, compile=True)
    residency = Residency(DEVICE)
    residency.add("vae", torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="name 'vae' is already managed"):
        residency.add("vae", torch.nn.Linear(4, 4))


def test_fast_path_and_stock_forward_give_the_same_image(tiny_package, nf4_everywhere):
    request = GenerationRequest("a red boat", width=96, height=64, num_inference_steps=3, seed=5)
    images = {
        fast: Generator.from_pretrained(tiny_package, device=DEVICE, fast=fast, max_pe_tokens=6).generate(request)
        for fast in (False, True)
    }
    assert images[True].revised_prompt == images[False].revised_prompt
    difference = np.abs(pixels(images[True].images[0]) - pixels(images[False].images[0]))
    assert difference.mean() < 4.0  # a broken fast path gives another image (mean differences of tens)


@needs_cuda
def test_low_vram_gives_the_gpu_mode_image_with_less_memory_and_reruns_move_nothing(tiny_package):
    request = GenerationRequest("a red boat", width=256, height=256, num_inference_steps=3, seed=5)
    results, resident = {}, {}
    for mode in ("all-on-gpu", "low-vram"):
        generator = Generator.from_pretrained(tiny_package, memory_mode=mode, max_pe_tokens=6)
        results[mode] = generator.generate(request)
        if mode == "low-vram":
            residency = generator.loaded.residency
            assert residency.resident == "transformer"
            assert all(t.device.type == "cpu" for t in tensors(generator.pipe.pe))
            moved = residency.seconds_moving
            again = generator.generate(request)  # cached prompt: only the transformer is needed, and it is there
            assert again.prompt_cached and residency.seconds_moving == moved
            assert np.array_equal(pixels(again.images[0]), pixels(results[mode].images[0]))
            saved = sum(residency.bytes(name) for name in residency.names) - residency.arena_bytes
            del residency, again  # the generator's alone, so that its deletion gives back what it holds
        gc.collect()
        torch.cuda.empty_cache()
        held = torch.cuda.memory_allocated()  # with what stays on the GPU between requests
        del generator
        gc.collect()
        torch.cuda.empty_cache()
        # What the generator held: what its deletion gave back. Not a difference from before the load: that counts
        # what the process allocates once and keeps (cuBLAS's workspace for a stream it had not used yet).
        resident[mode] = held - torch.cuda.memory_allocated()
    assert results["all-on-gpu"].revised_prompt == results["low-vram"].revised_prompt
    assert np.array_equal(pixels(results["all-on-gpu"].images[0]), pixels(results["low-vram"].images[0]))
    # The peak of the tiny model is the decoder's and the activations' (the full model's peaks, 9.5 vs 5.9 GiB,
    # are in docs/benchmarks.md); what low-vram saves, the models held between requests, is measurable here.
    # Between requests low-vram holds the arena (the largest model, each tensor aligned to 256 bytes) where
    # all-on-gpu holds every model; both keep the VAE, the cached prompt and the PE's decoder (KV cache, graph).
    assert resident["all-on-gpu"] - resident["low-vram"] >= saved - 512 > 0


def test_low_vram_keeps_the_pe_decoder_between_requests_and_gives_the_same_images(
    tiny_package, nf4_everywhere, monkeypatch
):
    """The low-vram bookkeeping of ``Generator`` on any device: the pipeline's models handed to a ``Residency``
    as the loader does in low-vram mode (which itself needs CUDA: on a CPU the arena lives in CPU memory)."""
    import dataclasses

    requests = [GenerationRequest("a red boat", width=64, height=64, num_inference_steps=2, seed=s) for s in (5, 6)]
    loaded = load_pipeline(tiny_package, device=DEVICE)
    on_gpu = Generator(loaded, max_pe_tokens=6, prompt_cache_size=0)
    expected = [on_gpu.generate(request) for request in requests]  # on a CPU, repacks bitsandbytes' weights first
    residency = Residency(DEVICE)
    for name in ("pe", "text_encoder", "transformer"):
        residency.add(name, getattr(loaded.pipe, name))
    low = dataclasses.replace(loaded, memory_mode=MemoryMode.LOW_VRAM, residency=residency)
    generator = Generator(low, max_pe_tokens=6, prompt_cache_size=0)
    results = [generator.generate(requests[0])]
    decoder, moved = generator.pe_decoder, residency.seconds_moving
    results.append(generator.generate(requests[1]))
    assert residency.seconds_moving > moved  # the PE left and came back
    assert generator.pe_decoder is decoder and decoder.captures == (1 if HAS_CUDA else 0)  # kept, not captured again
    for result, reference in zip(results, expected, strict=True):
        assert result.revised_prompt == reference.revised_prompt
        assert np.array_equal(pixels(result.images[0]), pixels(reference.images[0]))

    def fail(*args, **kwargs):
        raise RuntimeError("decoding failed")

    monkeypatch.setattr(decoder, "generate", fail)
    with pytest.raises(RuntimeError, match="decoding failed"):
        generator.generate(requests[0])
    assert generator.pe_decoder is None  # a failed run gives the decoder's memory back
    again = generator.generate(requests[0])
    assert generator.pe_decoder is not None and again.revised_prompt == expected[0].revised_prompt


@needs_cuda
def test_low_vram_reuses_the_pe_graph_across_requests_and_matches_all_on_gpu(tiny_package):
    requests = [GenerationRequest(p, width=64, height=64, num_inference_steps=2, seed=7) for p in ("a cat", "a dog")]
    results = {}
    for mode in ("all-on-gpu", "low-vram"):
        generator = Generator.from_pretrained(tiny_package, memory_mode=mode, max_pe_tokens=12)
        results[mode] = [generator.generate(request) for request in requests]
        assert not any(result.prompt_cached for result in results[mode])
        assert generator.pe_decoder.captures == 1 and generator.pe_decoder.broken is None
        if mode == "low-vram":
            assert generator.loaded.residency.resident == "transformer"
    for on_gpu, low in zip(results["all-on-gpu"], results["low-vram"], strict=True):
        assert low.revised_prompt == on_gpu.revised_prompt
        assert np.array_equal(pixels(low.images[0]), pixels(on_gpu.images[0]))


@torch.no_grad()
def test_text_encoder_table_in_cpu_memory_gives_the_same_embeddings(tiny_package, nf4_everywhere):
    from transformers import AutoModel, AutoModelForCausalLM

    from ernie_nf4.runtime.memory_savers import CpuEmbedding, embeddings_on_cpu

    kwargs = {"dtype": torch.bfloat16, "device_map": {"": DEVICE}}
    model = AutoModel.from_pretrained(tiny_package / "text_encoder", **kwargs)
    ids = torch.tensor([[1, 5, 77, 300, 12]], device=DEVICE)
    before = model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    table = model.get_input_embeddings().weight
    assert embeddings_on_cpu(model) == table.numel() * table.element_size()
    assert isinstance(model.get_input_embeddings(), CpuEmbedding)
    assert model.get_input_embeddings().table.device.type == "cpu"
    after = model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    assert after.device == before.device and torch.equal(after, before)
    pe = AutoModelForCausalLM.from_pretrained(tiny_package / "pe", **kwargs)
    assert embeddings_on_cpu(pe) == 0  # tied to the output layer, which needs it on the GPU
    assert isinstance(pe.get_input_embeddings(), torch.nn.Embedding)


@torch.no_grad()
def test_tiled_vae_decode_tiles_only_large_images_and_is_reproducible(tiny_original):
    from diffusers import AutoencoderKLFlux2

    from ernie_nf4.runtime.memory_savers import tile_vae

    vae = AutoencoderKLFlux2.from_pretrained(tiny_original / "vae", dtype=torch.float32).to(DEVICE)
    g = torch.Generator().manual_seed(0)
    channels = vae.config.latent_channels
    small, large = (torch.randn(1, channels, *hw, generator=g).to(DEVICE) for hw in ((8, 8), (24, 16)))
    whole = {"small": vae.decode(small).sample, "large": vae.decode(large).sample}
    tile_vae(vae, tile=64)  # 64 px = 8 latents
    assert torch.equal(vae.decode(small).sample, whole["small"])  # not larger than a tile: decoded whole
    tiled = vae.decode(large).sample
    assert tiled.shape == whole["large"].shape
    assert not torch.equal(tiled, whole["large"])  # 3 x 2 overlapping tiles
    assert torch.equal(vae.decode(large).sample, tiled)


def test_auto_picks_the_mode_the_usable_memory_holds_and_refuses_below_it():
    from ernie_nf4.errors import EnvironmentUnsupported
    from ernie_nf4.runtime.memory_modes import MemoryMode, choose_memory_mode

    assert choose_memory_mode("cuda:0", usable=12.0)[0] is MemoryMode.ALL_ON_GPU
    mode, reason = choose_memory_mode("cuda:0", usable=8.0)
    assert mode is MemoryMode.LOW_VRAM and "8.0 GiB usable" in reason and "low-vram needs 6 GiB" in reason
    assert choose_memory_mode("cuda:0", usable=6.0)[0] is MemoryMode.LOW_VRAM
    with pytest.raises(
        EnvironmentUnsupported, match=r"5.5 GiB of GPU memory usable on cuda:0, the model needs at least 6"
    ):
        choose_memory_mode("cuda:0", usable=5.5)
    assert choose_memory_mode("cpu")[0] is MemoryMode.ALL_ON_GPU


def test_auto_on_this_machine_loads_and_says_why(tiny_package, nf4_everywhere):
    generator = Generator.from_pretrained(tiny_package, device=DEVICE, memory_mode="auto", max_pe_tokens=4)
    assert generator.loaded.memory_mode.value in ("all-on-gpu", "low-vram")
    assert generator.loaded.memory_mode_reason.startswith("auto: ")


def test_parse_is_the_one_check_of_a_memory_mode_and_its_old_name():
    from ernie_nf4.runtime.memory_modes import APP_MEMORY_MODES

    assert MemoryMode.parse(" Low-VRAM ") is MemoryMode.LOW_VRAM
    assert MemoryMode.parse("gpu") is MemoryMode.ALL_ON_GPU  # the old name of all-on-gpu
    assert MemoryMode.parse(MemoryMode.AUTO, allowed=APP_MEMORY_MODES) is MemoryMode.AUTO
    with pytest.raises(ValueError, match=r"--memory-mode must be one of \['auto', 'all-on-gpu', 'low-vram'\], got"):
        MemoryMode.parse(MemoryMode.MODEL_OFFLOAD, argument="--memory-mode", allowed=APP_MEMORY_MODES)
