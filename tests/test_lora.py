"""LoRA files on the ERNIE-Image transformer: every key layout diffusers' loader reads, written here by plain
safetensors calls, applies as diffusers' own loader (PEFT) applies it; on the NF4 package, scale 0 is the image of
no LoRA, a scale changes the image, the same request gives the same pixels, and switching LoRAs or scales between
requests reloads nothing; damaged or foreign files are refused by name."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ernie_nf4.errors import InvalidArgument
from ernie_nf4.request import GenerationRequest, LoraChoice

from .support.fixtures import DEVICE

PREFIXES = {"PEFT": "base_model.model.", "AI-Toolkit": "diffusion_model.", "diffusers": "transformer."}
# The repeated block's linear layers, as diffusers' ErnieImageSharedAdaLNBlock names them: (in, out) from the config
BLOCK_LINEARS = {
    "self_attention.to_q": ("hidden_size", "hidden_size"),
    "self_attention.to_k": ("hidden_size", "hidden_size"),
    "self_attention.to_v": ("hidden_size", "hidden_size"),
    "self_attention.to_out.0": ("hidden_size", "hidden_size"),
    "mlp.gate_proj": ("hidden_size", "ffn_hidden_size"),
    "mlp.up_proj": ("hidden_size", "ffn_hidden_size"),
    "mlp.linear_fc2": ("ffn_hidden_size", "hidden_size"),
}


TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "gate_proj", "up_proj", "linear_fc2"]


def lora_weights(config: dict, rank: int = 4, seed: int = 0, layers=None, std: float = 0.2) -> dict:
    """Random LoRA A/B pairs for every attention and MLP linear of ``layers`` (all by default), keyed by module."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(config["num_layers"]) if layers is None else layers:
        for module, (fan_in, fan_out) in BLOCK_LINEARS.items():
            a = torch.randn(rank, config[fan_in], generator=g) * std
            b = torch.randn(config[fan_out], rank, generator=g) * std
            weights[f"layers.{layer}.{module}"] = (a, b)
    return weights


def write_lora(path, weights: dict, layout: str = "AI-Toolkit", dtype=torch.bfloat16, metadata=None, alphas=None):
    """A LoRA file as a trainer writes it: ``<prefix><module>.lora_A.weight`` / ``.lora_B.weight``."""
    prefix = PREFIXES[layout]
    tensors = {}
    for module, (a, b) in weights.items():
        tensors[f"{prefix}{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{prefix}{module}.lora_B.weight"] = b.to(dtype).contiguous()
        if alphas is not None:
            tensors[f"{prefix}{module}.alpha"] = torch.tensor(float(alphas))
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def config(tiny_original):
    return json.loads((tiny_original / "transformer" / "config.json").read_text())


def _transformer(tiny_original, dtype=torch.float32):
    from diffusers import ErnieImageTransformer2DModel

    return ErnieImageTransformer2DModel.from_pretrained(tiny_original / "transformer", torch_dtype=dtype).eval()


def _ours(tiny_original, path, scale: float, fast: bool = True):
    from ernie_nf4.runtime.fast_transformer import enable_fast_path
    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    model = _transformer(tiny_original)
    lora = read_lora("style", path, linear_shapes(model))
    slots = attach_loras(model, [lora])
    slots.select([LoraChoice("style", scale)])
    if fast:
        enable_fast_path(model)
    return model, lora


def _diffusers(tiny_original, path, scale: float):
    """The same file through diffusers' ERNIE-Image LoRA loader and PEFT."""
    from diffusers.loaders.lora_pipeline import ErnieImageLoraLoaderMixin

    model = _transformer(tiny_original)
    state, metadata = ErnieImageLoraLoaderMixin.lora_state_dict(str(path), return_lora_metadata=True)
    model.load_lora_adapter(state, prefix="transformer", adapter_name="style", metadata=metadata)
    model.set_adapters(["style"], weights=[scale])
    return model


def _forward(model, seed: int = 0):
    from ernie_nf4.runtime.fast_transformer import dummy_call

    with torch.no_grad():
        return model(**dummy_call(model, (4, 4), (5, 3), seed), return_dict=False)[0]


@pytest.mark.parametrize("layout", list(PREFIXES))
def test_each_layout_applies_as_diffusers_own_loader_does(layout, tiny_original, config, tmp_path):
    path = write_lora(tmp_path / f"{layout}.safetensors", lora_weights(config), layout, dtype=torch.float32)
    plain = _forward(_transformer(tiny_original))
    reference = _diffusers(tiny_original, path, 1.0)
    expected = _forward(reference)
    ours, lora = _ours(tiny_original, path, 1.0)
    assert lora.layout == layout and len(lora.modules) == 7 * config["num_layers"]
    got = _forward(ours)
    change = (expected - plain).abs().max()
    assert change > 1e-2  # the LoRA matters
    assert (got - expected).abs().max() < 1e-3 * change
    half_ours, _ = _ours(tiny_original, path, 0.5)
    reference.set_adapters(["style"], weights=[0.5])
    half = _forward(reference)
    assert (half - expected).abs().max() > 0.2 * change
    assert (_forward(half_ours) - half).abs().max() < 1e-3 * change


@pytest.mark.parametrize("how", ["metadata", "alpha keys"])
def test_alpha_is_read_as_diffusers_reads_it(how, tiny_original, config, tmp_path):
    weights = lora_weights(config, rank=4)
    if how == "metadata":  # what diffusers' save_lora_weights writes: PEFT's settings as JSON
        # what ErnieImagePipeline.save_lora_weights writes: PEFT's settings, prefixed with the component
        settings = {"transformer.r": 4, "transformer.lora_alpha": 1, "transformer.target_modules": TARGETS}
        metadata = {"lora_adapter_metadata": json.dumps(settings), "format": "pt"}
        path = write_lora(tmp_path / "a.safetensors", weights, "diffusers", torch.float32, metadata)
        expected = _forward(_diffusers(tiny_original, path, 1.0))
    else:  # the same scaling (alpha 1, rank 4) from alpha tensors; diffusers' ERNIE-Image loader refuses such keys
        path = write_lora(tmp_path / "a.safetensors", weights, "AI-Toolkit", torch.float32, alphas=1)
        quarter = write_lora(
            tmp_path / "q.safetensors", {m: (a, b / 4) for m, (a, b) in weights.items()}, "PEFT", torch.float32
        )
        expected = _forward(_diffusers(tiny_original, quarter, 1.0))
    plain = _forward(_transformer(tiny_original))
    got = _forward(_ours(tiny_original, path, 1.0)[0])
    full = _forward(_ours(tiny_original, write_lora(tmp_path / "f.safetensors", weights, "PEFT"), 1.0)[0])
    change = (expected - plain).abs().max()
    assert change > 1e-2
    assert (got - expected).abs().max() < 1e-3 * change
    assert (full - expected).abs().max() > 0.5 * change  # alpha / rank = 1/4 was applied


def _pixels(generator, loras=(), seed: int = 3) -> np.ndarray:
    request = GenerationRequest(
        "a red fox", width=80, height=64, num_inference_steps=3, seed=seed, use_pe=False, loras=tuple(loras)
    )
    return np.asarray(generator.generate(request).images[0])


@pytest.fixture(scope="module")
def lora_generator(tiny_package, nf4_everywhere, tmp_path_factory):
    """The NF4 package with the same LoRA in each layout, and a second one of its own."""
    from ernie_nf4.runtime.generation import Generator

    config = json.loads((tiny_package / "transformer" / "config.json").read_text())
    folder = tmp_path_factory.mktemp("loras")
    weights = lora_weights(config)
    loras = [(layout, write_lora(folder / f"{layout}.safetensors", weights, layout)) for layout in PREFIXES]
    loras.append(("other", write_lora(folder / "other.safetensors", lora_weights(config, rank=8, seed=1, layers=[0]))))
    return Generator.from_pretrained(tiny_package, device=DEVICE, max_pe_tokens=12, prompt_cache_size=0, loras=loras)


@pytest.mark.nf4
def test_on_the_nf4_package_a_scale_changes_the_image_and_scale_0_is_no_lora(lora_generator, tiny_generator):
    from bitsandbytes.nn import Linear4bit

    to_q = lora_generator.pipe.transformer.layers[0].self_attention.to_q
    assert isinstance(to_q, Linear4bit) and to_q.weight.__class__.__name__ == "Params4bit"  # NF4 stays NF4
    plain = _pixels(tiny_generator)
    assert np.array_equal(_pixels(lora_generator), plain)
    assert np.array_equal(_pixels(lora_generator, [LoraChoice("PEFT", 0.0)]), plain)
    one = _pixels(lora_generator, [LoraChoice("PEFT", 1.0)])
    assert np.abs(one.astype(int) - plain).mean() > 2
    assert np.array_equal(_pixels(lora_generator, [LoraChoice("PEFT", 1.0)]), one)  # reproducible
    two = _pixels(lora_generator, [LoraChoice("PEFT", 2.0)])
    assert np.abs(two.astype(int) - one).mean() > 1
    # The same weights in each layout land on the same layers: the same pixels
    for layout in ("AI-Toolkit", "diffusers"):
        assert np.array_equal(_pixels(lora_generator, [LoraChoice(layout, 1.0)]), one)
    both = _pixels(lora_generator, [LoraChoice("PEFT", 1.0), LoraChoice("other", 1.0)])
    assert np.abs(both.astype(int) - one).mean() > 0.5  # two LoRAs at once
    assert np.array_equal(_pixels(lora_generator, [LoraChoice("PEFT", 0.0)]), plain)  # nothing stays behind


@pytest.mark.nf4
def test_switching_loras_between_requests_reloads_nothing(lora_generator):
    model = lora_generator.pipe.transformer
    layer = model.layers[1].mlp.linear_fc2
    buffers = [layer.lora_down.data_ptr(), layer.lora_up.data_ptr(), layer.lora_scale.data_ptr()]
    weight = layer.weight.data_ptr()
    for choice in ([LoraChoice("other", 1.5)], [], [LoraChoice("diffusers", 0.25)]):
        _pixels(lora_generator, choice)
        assert lora_generator.pipe.transformer is model
        assert [layer.lora_down.data_ptr(), layer.lora_up.data_ptr(), layer.lora_scale.data_ptr()] == buffers
        assert layer.weight.data_ptr() == weight
    assert lora_generator.loaded.loras.selected == (LoraChoice("diffusers", 0.25),)


@pytest.mark.nf4
def test_an_unknown_lora_is_refused_by_name_before_any_work(lora_generator):
    calls = []
    request = GenerationRequest("a fox", width=80, height=64, num_inference_steps=2, loras=(LoraChoice("nope", 1.0),))
    with pytest.raises(InvalidArgument) as refused:
        lora_generator.generate(request, on_stage=lambda stage, _s: calls.append(stage))
    assert refused.value.field == "lora" and "'nope'" in str(refused.value) and "'PEFT'" in str(refused.value)
    assert calls == []


@pytest.mark.nf4
@pytest.mark.slow
def test_compiled_blocks_run_every_lora_and_scale_without_recompiling(tiny_package, nf4_everywhere, tmp_path):
    """One compiled block serves LoRA on, off and rescaled: no new graph, no eager fallback."""
    from diffusers import ErnieImageTransformer2DModel
    from torch._dynamo.utils import counters

    from ernie_nf4.runtime.fast_transformer import compile_blocks, dummy_call
    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    torch._dynamo.reset()
    config = json.loads((tiny_package / "transformer" / "config.json").read_text())
    path = write_lora(tmp_path / "l.safetensors", lora_weights(config, rank=4, layers=[1]))

    def nf4():
        return ErnieImageTransformer2DModel.from_pretrained(
            tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
        )

    plain_model, model = nf4(), nf4()
    slots = attach_loras(model, [read_lora("l", path, linear_shapes(model))])
    # at least 64 tokens: below that, Inductor's code for a small-rank product is guarded off (the call runs eagerly)
    inputs = dummy_call(model, (8, 12), (5, 2))
    with torch.no_grad():
        plain = plain_model(**inputs, return_dict=False)[0]
        compiler = compile_blocks(model)
        model(**inputs, return_dict=False)  # eager, then compiles
        assert compiler.active
        graphs = counters["stats"]["unique_graphs"]
        outputs = {}
        for scale in (0.0, 1.0, 0.5, 0.0):
            slots.select([LoraChoice("l", scale)])
            outputs[scale] = model(**inputs, return_dict=False)[0]
        assert counters["stats"]["unique_graphs"] == graphs and compiler.fallback_calls == 0
    error = float((outputs[0.0].float() - plain.float()).norm() / plain.float().norm())
    assert error <= 1e-2
    change = float((outputs[1.0].float() - plain.float()).norm() / plain.float().norm())
    assert change > 0.05
    slots.select([LoraChoice("l", 1.0)])
    from ernie_nf4.runtime.fast_transformer import disable_fast_path

    disable_fast_path(model)  # the stock forward with the same LoRA term: what the compiled block computed
    with torch.no_grad():
        eager = model(**inputs, return_dict=False)[0]
    assert float((outputs[1.0].float() - eager.float()).norm() / eager.float().norm()) <= 1e-2


def _raw_safetensors(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _bad_files(tmp_path, config):
    weights = lora_weights(config, layers=[0])
    hidden = config["hidden_size"]
    good = {f"diffusion_model.{m}.lora_{p}.weight": t for m, (a, b) in weights.items() for p, t in (("A", a), ("B", b))}

    def saved(name, tensors, **kwargs):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name), **kwargs)
        return tmp_path / name, None

    torch.save(good, tmp_path / "pickled.bin")
    key_a = "diffusion_model.layers.0.self_attention.to_q.lora_A.weight"
    nan = dict(good, **{key_a: torch.full((4, hidden), float("nan"))})
    return {
        "a pickle": (tmp_path / "pickled.bin", "only safetensors"),
        "not safetensors": (_raw_safetensors(tmp_path / "junk.safetensors", {}, b"x" * 10), "not a readable"),
        "truncated": (
            _raw_safetensors(
                tmp_path / "cut.safetensors",
                {key_a: {"dtype": "F32", "shape": [4, hidden], "data_offsets": [0, 16 * hidden]}},
            ),
            "truncated",
        ),
        "another model's keys": saved(
            "sdxl.safetensors", {"lora_unet_down_blocks_0.lora_down.weight": torch.ones(4, 8)}
        ),
        "an unknown module": saved(
            "mod.safetensors",
            {
                "diffusion_model.layers.0.nope.lora_A.weight": torch.ones(4, 8),
                "diffusion_model.layers.0.nope.lora_B.weight": torch.ones(8, 4),
            },
        ),
        "wrong shapes": saved("shape.safetensors", dict(good, **{key_a: torch.ones(4, hidden + 64)})),
        "a missing half": saved("half.safetensors", {key_a: torch.ones(4, hidden)}),
        "DoRA": saved(
            "dora.safetensors",
            dict(
                good,
                **{"diffusion_model.layers.0.self_attention.to_q.lora_magnitude_vector.dora_scale": torch.ones(hidden)},
            ),
        ),
        "NaN": saved("nan.safetensors", nan),
        "integers": saved("int.safetensors", dict(good, **{key_a: torch.ones(4, hidden, dtype=torch.int32)})),
        "a bias": saved(
            "bias.safetensors",
            dict(good, **{"diffusion_model.layers.0.self_attention.to_q.lora_B.bias": torch.ones(hidden)}),
        ),
    }


EXPECTED = {
    "another model's keys": "lora_unet_down_blocks_0.lora_down.weight",
    "an unknown module": "layers.0.nope",
    "wrong shapes": "layers.0.self_attention.to_q",
    "a missing half": "lora_B",
    "DoRA": "DoRA",
    "NaN": "NaN",
    "integers": "I32",
    "a bias": "lora_B.bias",
}


@pytest.mark.parametrize("case", ["a pickle", "not safetensors", "truncated", *EXPECTED])
def test_bad_or_foreign_files_are_refused_naming_the_file_and_the_key(case, tmp_path, config):
    from diffusers import ErnieImageTransformer2DModel

    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    path, words = _bad_files(tmp_path, config)[case]
    with torch.device("meta"):
        linears = linear_shapes(ErnieImageTransformer2DModel.from_config(config))
    with pytest.raises(InvalidArgument) as refused:
        read_lora("mine", path, linears)
    message = str(refused.value)
    assert refused.value.field == "lora" and "'mine'" in message and str(path) in message
    assert (words or EXPECTED[case]) in message, message


@pytest.mark.nf4
@pytest.mark.slow
def test_the_benchmark_measures_each_package_mode_again_with_a_lora(tiny_original, tiny_package, tmp_path):
    from ernie_nf4.benchmark.run import main
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora
    from ernie_nf4.synthetic.lora import main as write_lora_file

    path = tmp_path / "rank8.safetensors"
    write_lora_file(["--original", str(tiny_original), "--output", str(path), "--rank", "8"])
    with torch.device("meta"):
        from diffusers import ErnieImageTransformer2DModel

        config = json.loads((tiny_original / "transformer" / "config.json").read_text())
        lora = read_lora("r", path, linear_shapes(ErnieImageTransformer2DModel.from_config(config)))
    assert lora.rank == 8 and len(lora.modules) == 7 * config["num_layers"]  # every attention and MLP linear
    report_file, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["--package", tiny_package, "--modes", "nf4", "--width", "64", "--height", "64", "--steps", "2"]
    args += ["--max-pe-tokens", "4", "--lora", path, "--json", report_file, "--markdown", markdown, "--repeat", "1"]
    assert main([str(a) for a in args]) == 0
    report = json.loads(report_file.read_text())
    modes = {r["mode"]: r for r in report["modes"]}
    assert list(modes) == ["nf4", "nf4+lora"] and all(m["status"] == "ok" for m in modes.values())
    assert report["settings"]["lora"] == str(path)
    ratio = modes["nf4+lora"]["ms_per_step"] / modes["nf4"]["ms_per_step"]
    assert f"- denoising step with the LoRA: nf4+lora / nf4 = {ratio:.2f}x" in markdown.read_text()


def test_auto_counts_the_loras_on_top_of_each_modes_need():
    from ernie_nf4.errors import EnvironmentUnsupported
    from ernie_nf4.runtime.memory_modes import NEEDS_GIB, MemoryMode, choose_memory_mode

    low = NEEDS_GIB[MemoryMode.LOW_VRAM]
    assert choose_memory_mode("cuda:0", usable=low + 0.1)[0] is MemoryMode.LOW_VRAM
    with pytest.raises(EnvironmentUnsupported) as refused:
        choose_memory_mode("cuda:0", usable=low + 0.1, extra_gib=0.4)
    assert f"{low + 0.4:.1f} GiB (low-vram with 0.4 GiB of LoRAs)" in str(refused.value)
    mode, reason = choose_memory_mode("cuda:0", usable=NEEDS_GIB[MemoryMode.ALL_ON_GPU] + 0.1, extra_gib=0.4)
    assert mode is MemoryMode.LOW_VRAM and "with 0.4 GiB of LoRAs" in reason
    streamed = {MemoryMode.ALL_ON_GPU: 0.4, MemoryMode.LOW_VRAM: 0.004}  # low-vram keeps the weights in CPU memory
    mode, reason = choose_memory_mode("cuda:0", usable=low + 0.1, extra_gib=streamed)
    assert mode is MemoryMode.LOW_VRAM and reason.endswith(f"low-vram needs {low:.0f} GiB")


def _mixed_ranks(config: dict) -> dict:
    """Block 0 at rank 4 and block 1 at rank 8, as a trainer's rank pattern leaves a file."""
    weights = lora_weights(config, rank=4, layers=[0])
    weights.update(lora_weights(config, rank=8, seed=1, layers=[1]))
    return weights


def _compare(tiny_original, ours_path, reference) -> None:
    plain = _forward(_transformer(tiny_original))
    expected = _forward(reference)
    got = _forward(_ours(tiny_original, ours_path, 1.0)[0])
    change = (expected - plain).abs().max()
    assert change > 1e-2
    assert (got - expected).abs().max() < 1e-3 * change


def test_a_file_whose_rank_differs_per_block_applies_as_diffusers_applies_it(tiny_original, config, tmp_path):
    path = write_lora(tmp_path / "mixed.safetensors", _mixed_ranks(config), "PEFT", torch.float32)
    _compare(tiny_original, path, _diffusers(tiny_original, path, 1.0))


def test_a_file_diffusers_saved_with_rank_and_alpha_patterns_reads_back_as_diffusers_reads_it(
    tiny_original, config, tmp_path
):
    """The per-block settings diffusers writes (``^``-anchored pattern keys), from diffusers' own save."""
    from diffusers import ErnieImagePipeline
    from peft.utils import get_peft_model_state_dict

    source = write_lora(tmp_path / "mixed.safetensors", _mixed_ranks(config), "AI-Toolkit", torch.float32)
    trained = _diffusers(tiny_original, source, 1.0)
    settings = trained.peft_config["style"].to_dict()
    settings["alpha_pattern"] = {"^layers.1.self_attention.to_q": 2}  # one module of its own
    trained.peft_config["style"].alpha_pattern = settings["alpha_pattern"]
    ErnieImagePipeline.save_lora_weights(
        tmp_path / "saved",
        transformer_lora_layers=get_peft_model_state_dict(trained, adapter_name="style"),
        transformer_lora_adapter_metadata=settings,
    )
    saved = tmp_path / "saved" / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as handle:
        written = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert written["transformer.alpha_pattern"] and written["transformer.rank_pattern"]  # what this test is about
    _compare(tiny_original, saved, _diffusers(tiny_original, saved, 1.0))


def test_use_rslora_in_the_metadata_scales_by_the_ranks_square_root(tiny_original, config, tmp_path):
    settings = {"transformer.r": 4, "transformer.lora_alpha": 16, "transformer.use_rslora": True}
    settings["transformer.target_modules"] = TARGETS
    metadata = {"lora_adapter_metadata": json.dumps(settings)}
    path = write_lora(tmp_path / "rs.safetensors", lora_weights(config), "diffusers", torch.float32, metadata)
    _compare(tiny_original, path, _diffusers(tiny_original, path, 1.0))


def test_a_huge_alpha_is_refused_so_no_offered_lora_can_blacken_the_others(config, tmp_path):
    from diffusers import ErnieImageTransformer2DModel

    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    with torch.device("meta"):
        linears = linear_shapes(ErnieImageTransformer2DModel.from_config(config))
    path = write_lora(
        tmp_path / "big.safetensors", lora_weights(config, layers=[0]), "PEFT", torch.float32, alphas=3e38
    )
    with pytest.raises(InvalidArgument) as refused:
        read_lora("big", path, linears)
    assert "beyond 65504" in str(refused.value) and "lora_B" in str(refused.value)


@pytest.mark.parametrize("case", ["metadata is a list", "float shapes"])
def test_a_damaged_header_is_refused_by_name(case, config, tmp_path):
    from diffusers import ErnieImageTransformer2DModel

    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    with torch.device("meta"):
        linears = linear_shapes(ErnieImageTransformer2DModel.from_config(config))
    hidden = config["hidden_size"]
    key = "transformer.layers.0.self_attention.to_q.lora_"
    shape = [4.0, hidden] if case == "float shapes" else [4, hidden]
    header = {
        f"{key}A.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16 * hidden]},
        f"{key}B.weight": {"dtype": "F32", "shape": [hidden, 4], "data_offsets": [16 * hidden, 32 * hidden]},
    }
    if case == "metadata is a list":
        header["__metadata__"] = ["not", "a", "map"]
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, bytes(32 * hidden))
    with pytest.raises(InvalidArgument) as refused:
        read_lora("bad", path, linears)
    assert str(path) in str(refused.value)


def test_the_memory_counted_for_auto_is_what_the_slots_take(config, tmp_path, tiny_original):
    from ernie_nf4.runtime.lora import attach_loras, planned_bytes
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    model = _transformer(tiny_original, torch.bfloat16)
    linears = linear_shapes(model)
    one_block = write_lora(tmp_path / "one.safetensors", lora_weights(config, rank=8, layers=[1]), "PEFT")
    mixed = write_lora(tmp_path / "mixed.safetensors", _mixed_ranks(config), "PEFT")
    files = [read_lora("one", one_block, linears), read_lora("mixed", mixed, linears)]
    attach_loras(model, files)
    attached = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if "lora_" in name)
    assert planned_bytes(files, linears) == attached


def test_the_loader_refuses_a_name_given_twice_before_reading_anything(tiny_original, tmp_path):
    from ernie_nf4.runtime.loader import read_loras

    missing = tmp_path / "never-read.safetensors"
    with pytest.raises(InvalidArgument, match="each name once, got 'a' twice"):
        read_loras(tiny_original, [("a", missing), ("a", missing)])
    with pytest.raises(InvalidArgument, match="no control characters"):
        read_loras(tiny_original, [("a\nb", missing)])


def test_streamed_weights_stay_out_of_the_residency_and_give_the_same_output(config, tmp_path, tiny_original):
    """low-vram: the LoRA weights stay in one CPU buffer the layers copy from; the model the ``Residency`` moves
    holds only their scales, and the output is that of weights attached as buffers."""
    from ernie_nf4.runtime.lora import attach_loras, planned_bytes
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora
    from ernie_nf4.runtime.residency import Residency

    path = write_lora(tmp_path / "l.safetensors", _mixed_ranks(config), "PEFT")
    models, sizes = {}, {}
    for streamed in (False, True):
        model = _transformer(tiny_original)
        linears = linear_shapes(model)
        files = [read_lora("l", path, linears)]
        attach_loras(model, files, streamed=streamed).select([LoraChoice("l", 1.0)])
        residency = Residency("cpu")
        residency.add("transformer", model)
        residency.use("transformer")
        models[streamed], sizes[streamed] = model, residency.bytes("transformer")
    layers = [m for m in models[True].modules() if hasattr(m, "lora_up")]
    weights = sum(t.numel() * t.element_size() for m in layers for t in (m.lora_down, m.lora_up))
    assert weights > 0 and sizes[False] - sizes[True] == weights
    assert all(m.lora_down.device.type == "cpu" for m in layers)  # left where they are by the residency
    one_buffer = {m.lora_down.untyped_storage().data_ptr() for m in layers}
    assert len(one_buffer) == 1  # one page-locked buffer, locked once
    largest = max(m.lora_down.nbytes + m.lora_up.nbytes for m in layers)
    scales = sum(m.lora_scale.nbytes for m in layers)
    assert planned_bytes(files, linears, element_bytes=4, streamed=True) == scales + largest
    assert torch.equal(_forward(models[True]), _forward(models[False]))
