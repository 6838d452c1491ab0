"""FP8 and INT8 products for the NF4 transformer's linear layers (``runtime.compute``), on a real NF4 model: close to
the bf16 product, reproducible, compiled like bf16, under LoRAs, and from the app's flag to the loaded model."""

import numpy as np
import pytest
import torch

from ernie_nf4.errors import EnvironmentUnsupported, InvalidArgument
from ernie_nf4.request import GenerationRequest, LoraChoice
from ernie_nf4.runtime import compute
from ernie_nf4.runtime.compute import AUTO_MIN_ROWS, MIN_ROWS, Compute, apply_compute, available, resolve

from .support.fixtures import DEVICE, HAS_CUDA

pytestmark = pytest.mark.nf4
LOW = [Compute.FP8, Compute.INT8]


def relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def nf4_transformer(package, compute=None, min_rows=None):
    from diffusers import ErnieImageTransformer2DModel

    from ernie_nf4.runtime.fast_transformer import enable_fast_path

    model = ErnieImageTransformer2DModel.from_pretrained(
        package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    if compute is not None:
        model.compute = apply_compute(model, compute, min_rows=min_rows)
    enable_fast_path(model)
    return model


def forward(model, seed=0, latent=(8, 8), lengths=(5, 9)):
    from ernie_nf4.runtime.fast_transformer import dummy_call

    with torch.no_grad():
        return model(**dummy_call(model, latent, lengths, seed), return_dict=False)[0]


def dequantized(layer) -> torch.Tensor:
    """The layer's weight as bitsandbytes multiplies it, read straight from bitsandbytes."""
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).double()


def traced(module, ops: set[str]):
    """``module`` under torch.compile's tracing, run as traced (without Inductor); the functions its graphs call are
    added to ``ops``."""

    def backend(graph_module, inputs):
        ops.update(str(n.target) for n in graph_module.graph.nodes if n.op == "call_function")
        return graph_module.forward

    return torch.compile(module, backend=backend, fullgraph=True, dynamic=False)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("compute", LOW)
def test_a_layer_multiplies_as_float64_does_within_the_formats_rounding(
    tiny_package, nf4_everywhere, compute, compiled
):
    from bitsandbytes.nn import Linear4bit

    model = nf4_transformer(tiny_package, compute)
    layer = model.layers[0].mlp.gate_proj
    assert isinstance(layer, Linear4bit) and type(layer).__name__ == f"{compute.value.upper()}Linear4bit"
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 40, layer.in_features, generator=g) * torch.linspace(0.1, 4, 40)[:, None]).to(DEVICE)
    x = x.to(torch.bfloat16)
    ops = set()
    if compiled:  # compiled code dequantizes NF4 in plain torch ops, which Inductor fuses with the rounding
        layer = traced(layer, ops)
    with torch.no_grad():
        ours = layer(x)
    if compiled:
        assert not any("bitsandbytes" in op for op in ops), ops
        assert any("_scaled_mm" in op or "_int_mm" in op for op in ops), ops
        # on a GPU, FP8 weights come from the project's own kernel; elsewhere from torch ops Inductor fuses
        assert any("nf4_to_fp8" in op for op in ops) == (compute is Compute.FP8 and HAS_CUDA), ops
    exact = x.double() @ dequantized(layer).T
    assert ours.shape == exact.shape and ours.dtype == torch.bfloat16
    # E4M3 keeps 3 bits of mantissa (a few % per product), INT8 7 bits (under 1%); per token and per channel scales
    error = relative_error(ours, exact)
    assert 1e-4 < error < (0.05 if compute is Compute.FP8 else 0.01), error
    # each token is scaled on its own: a token 1000x larger leaves the others' products as they were
    loud = x.clone()
    loud[0, 0] *= 1000
    with torch.no_grad():
        assert torch.equal(layer(loud)[0, 1:], ours[0, 1:])


@pytest.mark.parametrize("compute", LOW)
def test_compiled_codes_weights_are_bitsandbytes_values_within_the_format(tiny_package, nf4_everywhere, compute):
    from ernie_nf4.runtime.compute import _range, _to_format
    from ernie_nf4.runtime.nf4_torch import dequantize_state, in_plain_layout

    model = nf4_transformer(tiny_package, compute)
    layers = [m for m in model.layers.modules() if getattr(type(m), "_compute", None)]
    assert len(layers) == 7 * len(model.layers)
    for layer in layers:
        packed, state = layer.weight.data, layer.weight.quant_state
        assert in_plain_layout(packed, state) and not in_plain_layout(packed.view(torch.int8), state)
        weight = dequantize_state(packed, state, torch.float32)
        assert torch.equal(weight.to(torch.bfloat16).double(), dequantized(layer))  # bitsandbytes' values, unrounded
        rounded = _to_format(weight, layer.compute_inverse_scale[:, None], compute).float()
        assert rounded.isfinite().all() and rounded.abs().max() <= _range(compute)


class _OneBlock(torch.nn.Module):
    """A model of one block holding ``layer``, as ``apply_compute`` walks a transformer."""

    def __init__(self, layer):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.ModuleList([layer])])

    @property
    def device(self):
        return next(self.parameters()).device


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="the kernel runs on CUDA GPUs")
@pytest.mark.parametrize("nested", [True, False], ids=["double-quantized", "single"])
def test_the_fp8_weight_kernel_gives_the_torch_ops_bytes(nested):
    """``nf4_to_fp8`` (one Triton kernel) against the same arithmetic in torch ops, for weights bitsandbytes
    quantizes here with and without double quantization, at the full-size model's widths."""
    import bitsandbytes as bnb

    from ernie_nf4.runtime.compute import _range, _to_format, _weight_in_format
    from ernie_nf4.runtime.nf4_torch import dequantize_state

    g = torch.Generator().manual_seed(0)
    for n, k in ((4096, 4096), (12288, 4096), (4096, 12288), (80, 144)):
        dense = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 4
        dense[0, 0] = 50  # one channel's largest value far from the rest
        layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(
            dense.to(torch.bfloat16), requires_grad=False, compress_statistics=nested, quant_type="nf4"
        )
        layer = layer.to("cuda")
        apply_compute(_OneBlock(layer), Compute.FP8, fp8_attention=False)
        assert layer.compute_kernel, (n, k)
        ours = _weight_in_format(layer, Compute.FP8)
        weight = dequantize_state(layer.weight.data, layer.weight.quant_state, torch.float32)
        torch_ops = _to_format(weight, layer.compute_inverse_scale[:, None], Compute.FP8)
        assert ours.dtype == torch.float8_e4m3fn and ours.shape == (n, k)
        assert torch.equal(ours.view(torch.uint8), torch_ops.view(torch.uint8)), (n, k)
        assert ours.float().abs().amax(dim=1).eq(_range(Compute.FP8)).all()  # each channel reaches the range


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="the kernel runs on CUDA GPUs")
def test_the_fused_activation_kernel_scales_as_the_torch_ops_do():
    """``gelu_mul_fp8`` (one Triton kernel a row) against ``_per_token(up * gelu(gate))`` in torch ops, at the
    full-size model's width, a width past a power of two and a narrow one; one row with a value far from the rest."""
    import torch.nn.functional as F

    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import gelu_mul_fp8
    from ernie_nf4.runtime.compute import _activation_kernel_runs, _per_token

    assert _activation_kernel_runs(f"cuda:{torch.cuda.current_device()}", 12288)  # the operator takes the kernel
    g = torch.Generator(device="cuda").manual_seed(0)
    for rows, n in ((300, 12288), (33, 4160), (70, 64)):
        gate = torch.randn(rows, n, device="cuda", generator=g).mul_(3).to(torch.bfloat16)
        up = torch.randn(rows, n, device="cuda", generator=g) * torch.rand(rows, 1, device="cuda", generator=g)
        up = up.to(torch.bfloat16)
        up[1, 7], gate[1, 7] = 300, 5
        xq, scales = gelu_mul_fp8(gate, up)
        want, want_scales = _per_token(up * F.gelu(gate), Compute.FP8)
        assert xq.dtype == torch.float8_e4m3fn and xq.shape == (rows, n) and scales.shape == (rows, 1)
        torch.testing.assert_close(scales, want_scales, rtol=2**-7, atol=0)  # a bf16 step of the row's largest
        codes, want_codes = xq.view(torch.uint8).int(), want.view(torch.uint8).int()
        assert (codes - want_codes).abs().max() <= 1, (rows, n)  # at most the next FP8 value
        assert (codes != want_codes).float().mean() < 1e-3, (rows, n)
        assert xq.float().abs().amax(dim=1).eq(448).all()  # each row reaches FP8's range


def test_the_feed_forward_scales_its_activation_in_one_operator(tiny_package, nf4_everywhere, style_lora):
    """In FP8 the feed-forward's activation and the last layer's input scaling are one operator in the compiled
    graph, and its output is the layers' own (on a CPU, which runs it in the same torch ops, bit for bit; on a GPU,
    where a kernel of its own runs it, within FP8's rounding), with a LoRA on every layer too; fewer rows than the
    layers' least keep the layers' own forward."""
    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    model = nf4_transformer(tiny_package, Compute.FP8)
    mlp = model.layers[0].mlp
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 40, mlp.gate_proj.in_features, generator=g).to(DEVICE, torch.bfloat16)
    ops, few = set(), set()
    with torch.no_grad():
        traced(lambda x: compute.feed_forward(mlp, x), ops)(h)
        traced(lambda x: compute.feed_forward(mlp, x), few)(h[:, : MIN_ROWS - 1])
        assert "ernie_nf4.gelu_mul_fp8.default" in ops and "ernie_nf4.gelu_mul_fp8.default" not in few, (ops, few)
        fused, own = compute.feed_forward(mlp, h), mlp(h)
        slots = attach_loras(model, [read_lora("style", style_lora, linear_shapes(model))])
        slots.select([LoraChoice("style", 1.0)])
        fused_lora, own_lora = compute.feed_forward(mlp, h), mlp(h)
    for ours, theirs in ((fused, own), (fused_lora, own_lora)):
        assert ours.shape == theirs.shape == h.shape and ours.dtype == torch.bfloat16
        if HAS_CUDA:
            assert relative_error(ours, theirs) < 0.01
        else:
            assert torch.equal(ours, theirs)
    assert relative_error(fused_lora, fused) > 0.01  # the LoRA's term is there


@pytest.mark.parametrize("compute, min_rows", [(Compute.FP8, None), (Compute.INT8, None), (Compute.FP8, 40)])
def test_few_rows_keep_the_layers_own_product(tiny_package, nf4_everywhere, compute, min_rows):
    from bitsandbytes.nn import Linear4bit

    from ernie_nf4.runtime.fast_transformer import dummy_call

    model = nf4_transformer(tiny_package, compute, min_rows)
    least = min_rows or MIN_ROWS
    layers = [m for m in model.layers.modules() if isinstance(m, Linear4bit)]
    assert layers and all(layer.compute_min_rows == least for layer in layers)
    layer = layers[0]
    x = torch.randn(1, least - 1, layer.in_features).to(DEVICE, torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), Linear4bit.forward(layer, x))
        # from that many rows on, the low-precision product
        more = torch.randn(1, least, layer.in_features).to(DEVICE, torch.bfloat16)
        assert not torch.equal(layer(more), Linear4bit.forward(layer, more))
    if min_rows is None:
        return
    # the whole transformer: a call with fewer rows (a 4x4 latent, 3 text tokens: 19) is the bf16 model's, bit for
    # bit; one with more (8x8, 5 and 9 tokens, a CFG batch of 2: 146) is not
    plain = nf4_transformer(tiny_package)
    with torch.no_grad():
        for latent, lengths, same in (((4, 4), (3,), True), ((8, 8), (5, 9), False)):
            call = dummy_call(model, latent, lengths, 0)
            ours, theirs = model(**call, return_dict=False)[0], plain(**call, return_dict=False)[0]
            assert torch.equal(ours, theirs) is same, (latent, lengths)
    with pytest.raises(InvalidArgument, match="min_rows must be 17 or more"):
        apply_compute(nf4_transformer(tiny_package), compute, min_rows=8)


@pytest.mark.parametrize("compute", LOW)
def test_the_transformer_stays_close_to_bf16_and_repeats_itself(tiny_package, nf4_everywhere, compute):
    bf16 = forward(nf4_transformer(tiny_package))
    model = nf4_transformer(tiny_package, compute)
    ours = forward(model)
    assert 0 < relative_error(ours, bf16) < 0.05
    assert torch.equal(forward(model), ours)  # same inputs, same outputs
    # only the repeated blocks' linear layers change: the text projection and the final layer keep their own product
    from bitsandbytes.nn import Linear4bit

    outside = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." not in name]
    outside = [m for m in outside if m not in set(model.layers.modules())]
    assert outside and all(type(m) in (torch.nn.Linear, Linear4bit) for m in outside)


@pytest.mark.slow
@pytest.mark.parametrize("compute", LOW)
def test_compiled_blocks_run_the_low_precision_product(tiny_package, nf4_everywhere, compute, tmp_path):
    compiled_like_eager(nf4_transformer(tiny_package, compute), tmp_path)


def compiled_like_eager(model, cache_dir) -> None:
    """``model``'s blocks compiled: they cover another size too (no eager fallback), give what eager gives up to a
    value rounded to the next FP8 step, and the same twice."""
    from ernie_nf4.runtime.fast_transformer import compile_blocks

    eager = forward(model)
    compiler = compile_blocks(model, cache_dir=cache_dir)
    forward(model)  # eager, then compiles
    assert compiler.active, compiler.describe()
    compiled = forward(model)
    other = forward(model, seed=1, latent=(6, 10), lengths=(3, 11))
    assert compiler.fallback_calls == 0
    assert relative_error(compiled, eager) < 0.03  # compiled code rounds some values to the next FP8 step
    assert torch.equal(forward(model), compiled)
    assert other.shape[-2:] == (6, 10) and other.isfinite().all()


@pytest.fixture
def style_lora(tiny_package, tmp_path):
    """A LoRA on every block linear, written by plain safetensors calls in PEFT's layout."""
    import json

    from .test_lora import lora_weights, write_lora

    config = json.loads((tiny_package / "transformer" / "config.json").read_text())
    return write_lora(tmp_path / "style.safetensors", lora_weights(config), "PEFT")


def test_loras_add_their_term_to_the_low_precision_product(tiny_package, nf4_everywhere, style_lora):
    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    path = style_lora
    plain = forward(nf4_transformer(tiny_package, Compute.FP8))
    model = nf4_transformer(tiny_package, Compute.FP8)
    slots = attach_loras(model, [read_lora("style", path, linear_shapes(model))])
    assert type(model.layers[0].mlp.gate_proj).__name__ == "LoraFP8Linear4bit"
    slots.select([LoraChoice("style", 0.0)])
    assert torch.equal(forward(model), plain)  # scale 0: the no-LoRA output, exactly
    slots.select([LoraChoice("style", 1.0)])
    assert relative_error(forward(model), plain) > 0.01


def test_names_are_checked_and_auto_takes_the_fastest_the_device_has():
    assert Compute.parse(" FP8 ") is Compute.FP8
    with pytest.raises(InvalidArgument, match=r"compute must be one of auto, bf16, fp8, int8, got 'fp4'"):
        Compute.parse("fp4")
    assert resolve("auto", "cpu", compiled=True) is Compute.BF16  # reference kernels on a CPU: no faster
    there = available("cpu")  # what torch's CPU kernels of this build run (probed)
    assert Compute.BF16 in there
    for mode in (Compute.FP8, Compute.INT8):
        if mode in there:
            assert resolve(mode.value, "cpu", compiled=False) is mode  # asked for: kept
        else:  # refused by name, listing what runs
            with pytest.raises(EnvironmentUnsupported, match=f"compute '{mode.value}' does not run on cpu.*bf16"):
                resolve(mode.value, "cpu")
    if HAS_CUDA:
        fp8 = torch.cuda.get_device_capability() >= (8, 9)
        assert resolve("auto", "cuda", compiled=True) is (Compute.AUTO if fp8 else Compute.BF16)
        assert resolve("auto", "cuda") is Compute.BF16  # eager, the scaling kernels cost more than they save


def test_auto_multiplies_in_fp8_from_its_rows_where_the_device_has_fp8(tiny_package, nf4_everywhere, monkeypatch):
    """``auto`` as the loader applies it: where the device's fastest mode is FP8 (here the CPU, whose reference
    kernels stand in for such a card's), FP8 layers that keep their own product below ``AUTO_MIN_ROWS`` rows (512x512
    images: slower in FP8); where it is bf16 (this CPU as it is), nothing changed."""
    from bitsandbytes.nn import Linear4bit

    if Compute.FP8 not in available(DEVICE):
        pytest.skip(f"FP8 products do not run on {DEVICE} with this torch")
    plain = nf4_transformer(tiny_package, "auto")
    if available(DEVICE)[0] is Compute.BF16:
        assert plain.compute is Compute.BF16 and type(plain.layers[0].self_attention.to_q) is Linear4bit
    monkeypatch.setattr(compute, "available", lambda device: (Compute.FP8, Compute.BF16))
    model = nf4_transformer(tiny_package, "auto")
    layer = model.layers[0].self_attention.to_q
    assert model.compute is Compute.AUTO and type(layer).__name__ == "FP8Linear4bit"
    assert layer.compute_min_rows == AUTO_MIN_ROWS
    with torch.no_grad():
        fewer = torch.randn(AUTO_MIN_ROWS - 1, layer.in_features, device=DEVICE, dtype=torch.bfloat16)
        assert torch.equal(layer(fewer), Linear4bit.forward(layer, fewer))
        more = torch.randn(AUTO_MIN_ROWS, layer.in_features, device=DEVICE, dtype=torch.bfloat16)
        assert not torch.equal(layer(more), Linear4bit.forward(layer, more))


def test_compiled_auto_blocks_cover_every_path_of_its_calls(tiny_package, nf4_everywhere, monkeypatch):
    """The compiled block is warmed on each path a call can take: below ``AUTO_MIN_ROWS`` (bf16), above it with
    samples shorter than FP8 attention's least (FP8 products, bf16 attention), and with samples that long (FP8
    products and attention): a 512x512-like call, a CFG batch of two such samples, and 1024x1024-like calls all run
    compiled, none eagerly."""
    from ernie_nf4.runtime.fast_transformer import BlockCompiler, warm_latents

    if Compute.FP8 not in available(DEVICE):
        pytest.skip(f"FP8 products do not run on {DEVICE} with this torch")
    monkeypatch.setattr(compute, "available", lambda device: (Compute.FP8, Compute.BF16))
    model = nf4_transformer(tiny_package, "auto")
    fp8 = nf4_transformer(tiny_package, "fp8")
    for m in (model, fp8):  # on by hand: the torch ops run it where cuDNN's kernel does not
        for block in m.layers:
            block.self_attention.fp8_attention_on = True
    assert len(warm_latents(model)) == 3 and len(warm_latents(fp8)) == 2
    compiler = BlockCompiler(model, cache_dir=None, backend="eager")  # Dynamo's guards, without Inductor's time
    assert compiler.compile() and compiler.activate(), compiler.describe()
    calls = {
        "below": ((8, 8), (5, 9)),
        "above, CFG, short samples": ((48, 48), (5, 9)),
        "above, one": ((64, 64), (5,)),
        "above, CFG": ((64, 64), (5, 9)),
    }
    for name, (latent, lengths) in calls.items():
        forward(model, latent=latent, lengths=lengths)
        assert compiler.fallback_calls == 0, name


@pytest.mark.slow
def test_the_generator_runs_each_compute_mode_reproducibly(tiny_package, nf4_everywhere, tiny_generator):
    from ernie_nf4.runtime.generation import Generator

    request = GenerationRequest("a red fox", width=64, height=64, num_inference_steps=3, seed=5, use_pe=False)
    base = np.asarray(tiny_generator.generate(request).images[0], dtype=np.float64)
    generator = Generator.from_pretrained(tiny_package, device=DEVICE, compute="int8", prompt_cache_size=0)
    assert generator.loaded.compute == "int8"
    first = np.asarray(generator.generate(request).images[0], dtype=np.float64)
    assert np.array_equal(first, np.asarray(generator.generate(request).images[0], dtype=np.float64))
    assert not np.array_equal(first, base)
    assert np.abs(first - base).mean() < 8  # of 255: the same picture, rounded a little differently


def test_the_apps_flag_and_variable_reach_the_loader():
    from ernie_nf4.webapp.cli import SettingsError, config_from_args, parse_args

    assert config_from_args(parse_args(["--tiny", "--compute", "int8"], environ={})).compute is Compute.INT8
    assert config_from_args(parse_args(["--tiny"], environ={"ERNIE_NF4_COMPUTE": "fp8"})).compute is Compute.FP8
    assert config_from_args(parse_args(["--tiny"], environ={})).compute is Compute.BF16
    with pytest.raises(SettingsError, match=r"--compute \(or ERNIE_NF4_COMPUTE\): compute must be one of"):
        parse_args(["--compute", "nf4"], environ={})


@pytest.mark.slow
def test_the_service_loads_the_compute_mode_asked_and_stats_say_it(tmp_path, nf4_everywhere):
    from ernie_nf4.serving.service import ImageService, ServiceConfig
    from ernie_nf4.webapp.stats_view import live_paragraph

    service = ImageService(ServiceConfig(model_dir=str(tmp_path / "tiny"), tiny=True, device=DEVICE, compute="int8"))
    assert "INT8" not in live_paragraph(service.live_stats())  # nothing said before the load
    service.load()
    layer = service._generator.loaded.pipe.transformer.layers[0].mlp.gate_proj
    assert type(layer).__name__ == "INT8Linear4bit"
    assert "multiply in INT8 (--compute int8); stored weights are unchanged" in live_paragraph(service.live_stats())
    assert "以 INT8 计算（--compute int8），存储的权重不变" in live_paragraph(service.live_stats(), "zh")
    assert service.stats().to_dict()["live"]["compute"] == "int8"
    # a saved image's parameters name the mode, so its seed can be run again the same way
    from ernie_nf4.webapp.png_params import parameters_text

    request = GenerationRequest("a red fox", width=64, height=64, seed=5)
    text = parameters_text(request, 5, None, service.label)
    assert "Model: TINY RANDOM MODEL (images are noise) (int8 compute)," in text


def test_compute_comes_before_loras(tiny_package, nf4_everywhere, style_lora):
    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    model = nf4_transformer(tiny_package)
    attach_loras(model, [read_lora("style", style_lora, linear_shapes(model))])
    with pytest.raises(InvalidArgument, match="apply_compute must come before attach_loras"):
        apply_compute(model, Compute.FP8)


@pytest.mark.slow
def test_a_package_written_by_plain_library_calls_runs_in_fp8(tiny_original, nf4_everywhere, tmp_path):
    from ernie_nf4.runtime.generation import Generator

    from .test_foreign_package import write_foreign_package

    # quantized as the published model card describes: each library's BitsAndBytesConfig and save_pretrained
    folder = write_foreign_package(tiny_original, tmp_path / "foreign", transformer_nf4=True)
    request = GenerationRequest("a red fox", width=64, height=64, num_inference_steps=2, seed=7, use_pe=False)
    plain = Generator.from_pretrained(folder, device=DEVICE, prompt_cache_size=0)
    fp8 = Generator.from_pretrained(folder, device=DEVICE, compute="fp8", prompt_cache_size=0)
    assert type(fp8.loaded.pipe.transformer.layers[0].mlp.gate_proj).__name__ == "FP8Linear4bit"
    base = np.asarray(plain.generate(request).images[0], dtype=np.float64)
    ours = np.asarray(fp8.generate(request).images[0], dtype=np.float64)
    assert not np.array_equal(ours, base) and np.abs(ours - base).mean() < 8
