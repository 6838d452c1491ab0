import json

import pytest

from ernie_nf4.benchmark.run import MODES, main
from ernie_nf4.package.metadata import read_metadata
from ernie_nf4.stats import RUN_STAGES as STAGES

from .support.fixtures import HAS_CUDA

pytestmark = pytest.mark.nf4


@pytest.mark.slow
def test_benchmark_runs_end_to_end_and_records_what_it_measured(tiny_original, tiny_package, tmp_path, nf4_everywhere):
    import shutil

    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    markdown, report_file = tmp_path / "bench.md", tmp_path / "bench.json"
    args = ["--original", tiny_original, "--package", package, "--width", "64", "--height", "64", "--steps", "3"]
    args += ["--max-pe-tokens", "8", "--write-metadata", "--markdown", markdown, "--json", report_file, "--fidelity"]
    args += ["--repeat", "1"]
    assert main([str(a) for a in args]) == 0

    report = json.loads(report_file.read_text())
    assert read_metadata(package)["benchmarks"]["64x64-3steps-pe"] == report
    modes = {r["mode"]: r for r in report["modes"]}
    assert list(modes) == list(MODES)
    needs_cuda = ["bf16-offload", "nf4-low-vram", "nf4-low-vram-compile"]
    measured = [m for m in MODES if HAS_CUDA or m not in needs_cuda]
    for name in measured:
        mode = modes[name]
        assert mode["status"] == "ok"
        assert mode["load_seconds"] > 0 and mode["warmup_seconds"] > 0
        assert all(mode["seconds"][s] > 0 for s in STAGES)
        assert sum(mode["seconds"][s] for s in STAGES) <= mode["seconds"]["total"]
        assert mode["ms_per_step"] == pytest.approx(1000 * mode["seconds"]["denoising"] / 3)
        assert (mode["peak_allocated_gib"] is not None) == HAS_CUDA
        assert (mode["moving_seconds"] is not None) == name.startswith("nf4-low-vram")
    if not HAS_CUDA:
        for name in needs_cuda:
            assert modes[name]["status"] == "skipped: needs a CUDA GPU"
    fid = report["fidelity"]
    assert set(fid["transformer_relative_error"]) == {"999", "500", "20"}
    # NF4 changes the transformer's outputs, but only a little; the fast path (eager or compiled) hardly at all.
    assert all(0 < e < 0.5 for e in fid["transformer_relative_error"].values())
    assert all(e <= 1e-2 for e in fid["fast_path_vs_stock_relative_error"].values())
    assert all(e <= 1e-2 for e in fid["compiled_vs_stock_relative_error"].values())
    assert set(fid["stock_other_attention_kernel_relative_error"]) == {"999", "500", "20"}
    for name in ("stock", "fast", "compiled"):  # all as close to a float32 run of the same weights
        assert all(e < 0.1 for e in fid["vs_float32_relative_error"][name].values())
    assert 0.5 < fid["final_latent_cosine"] <= 1.0
    table = markdown.read_text()
    assert "| nf4 |" in table and f"{modes['nf4']['ms_per_step']:.1f}" in table
    assert "python -m ernie_nf4.benchmark" in table
    step_ratio = modes["nf4"]["ms_per_step"] / modes["nf4-stock"]["ms_per_step"]
    assert f"- denoising step: nf4 / nf4-stock = {step_ratio:.2f}x" in table
    assert "- PE share of end to end, nf4: " in table
    assert "Against a float32 run of the same NF4 weights: stock t=999: " in table


def test_benchmark_refuses_bad_arguments(capsys):
    assert main(["--modes", "nf4", "--width", "64", "--height", "64", "--device", "cpu"]) == 2
    assert "mode nf4 needs --package" in capsys.readouterr().err
    assert main(["--package", "x", "--width", "100"]) == 2
    assert "width must be a multiple of 16" in capsys.readouterr().err


def test_what_a_long_run_reads_and_writes_is_checked_before_it_starts(tiny_package, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    base = ["--package", str(tiny_package), "--modes", "nf4", "--width", "64", "--height", "64", "--device", "cpu"]
    with pytest.raises(SystemExit) as refused:
        main([*base, "--json", str(a_file / "report.json")])
    assert refused.value.code == 2 and f"--json {a_file / 'report.json'}: {a_file} is a file" in capsys.readouterr().err
    for flags, words in (
        (["--markdown", str(a_file / "table.md")], f"--markdown {a_file / 'table.md'}: {a_file} is a file"),
        (["--markdown", "/sys/kernel/ernie-nf4/table.md"], "/sys/kernel cannot be written"),
        (["--lora", str(a_file)], "--lora: lora 'a-file'"),
        (["--max-pe-tokens", "0"], "max_pe_tokens must be an integer in [1, 8192]"),
    ):
        assert main([*base, *flags]) == 2
        said = capsys.readouterr()
        assert words in said.err and said.out == "", (flags, said)  # refused before a mode was loaded
    assert main(["--package", str(a_file), "--modes", "nf4", "--device", "cpu"]) == 2
    assert f"--package {a_file} is a file" in capsys.readouterr().err


def test_resolution_flag_a_progress_line_per_stage_and_three_runs_of_a_short_run(tiny_original, tmp_path, capsys):
    from ernie_nf4.benchmark.run import SHORT_RUN_STEPS, default_repeat

    args = ["--original", tiny_original, "--modes", "bf16", "--resolution", "96x64", "--steps", "2"]
    args += ["--max-pe-tokens", "4", "--json", tmp_path / "r.json"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"[bf16] run 1/3: {stage} " in out and f"[bf16] run 3/3: {stage} " in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["settings"]["width"], report["settings"]["height"]) == (96, 64)
    assert report["settings"]["repeat"] == 3  # a 2-step run: one sample of it says little
    assert default_repeat(SHORT_RUN_STEPS) == default_repeat(50) == 1
    with pytest.raises(SystemExit):
        main(["--original", str(tiny_original), "--resolution", "big"])
    assert "--resolution must be WIDTHxHEIGHT" in capsys.readouterr().err


def test_the_step_floor_counts_the_transformers_weights_and_attention():
    from ernie_nf4.formatting import denoising_step_flops, step_floor_line
    from ernie_nf4.synthetic.configs import REFERENCE_ORIGINAL_BYTES, component_config

    config = component_config("transformer")
    params = REFERENCE_ORIGINAL_BYTES["transformer"] / 2  # bf16 file of the real model
    tokens, h, layers = 64 * 64 + 256, config["hidden_size"], config["num_layers"]
    independent = 2 * (2 * params * tokens + 4 * tokens * tokens * h * layers)  # CFG batch of 2
    flops = denoising_step_flops(config, 1024, 1024, 256)
    assert abs(flops / independent - 1) < 0.05
    assert denoising_step_flops(config, 2048, 2048, 256) > 4 * flops  # attention grows with the square
    assert "= 2.00x" in step_floor_line(config, 1024, 1024, 256, 2 * 1000 * flops / 500e12, 500)


def test_the_step_floor_of_a_run_without_guidance_counts_one_row_an_image():
    # a guidance scale of 1 runs the transformer once a step (no unconditional half): its floor is half the guided
    # one's, and two images a prompt double it again
    from ernie_nf4.formatting import denoising_step_flops, markdown_table
    from ernie_nf4.synthetic.configs import component_config

    config = component_config("transformer")
    mode = {
        "mode": "nf4-compile",
        "status": "ok",
        "ms_per_step": 50.0,
        "load_seconds": 1.0,
        "cold_cache": True,
        "warmup_seconds": 1.0,
        "peak_allocated_gib": 1.0,
        "peak_reserved_gib": 1.0,
        "seconds": {"pe": 0.1, "text_encoding": 0.1, "denoising": 1.0, "vae_decode": 0.1, "total": 1.3},
        "pe_ms_per_token": 3.0,
    }

    def floor_tflop(guidance: float, images: int) -> float:
        settings = {
            "width": 512,
            "height": 512,
            "num_inference_steps": 8,
            "guidance_scale": guidance,
            "seed": 1,
            "use_pe": True,
            "max_pe_tokens": 256,
            "repeat": 1,
            "num_images": images,
        }
        report = {
            "settings": settings,
            "modes": [mode],
            "gpu": "a card",
            "versions": {},
            "synthetic": "full",
            "transformer_config": config,
            "bf16_tflops": 800.0,
        }
        [line] = [line for line in markdown_table(report).splitlines() if "arithmetic floor" in line]
        return float(line.split(": ")[1].split(" TFLOP")[0])

    guided = denoising_step_flops(config, 512, 512, 256) / 1e12
    assert floor_tflop(4.0, 1) == pytest.approx(guided, abs=0.05)
    assert floor_tflop(1.0, 1) == pytest.approx(guided / 2, abs=0.05)
    assert floor_tflop(1.0, 2) == pytest.approx(guided, abs=0.05)


@pytest.mark.slow
def test_each_compute_mode_is_measured_and_its_error_reported(tiny_original, tiny_package, tmp_path, nf4_everywhere):
    from ernie_nf4.runtime.compute import Compute, resolve

    report_file, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["--original", tiny_original, "--package", tiny_package, "--modes", "nf4-stock", "nf4", "--steps", "2"]
    args += ["--width", "64", "--height", "64", "--no-use-pe", "--compute", "bf16", "int8", "fp8", "int8", "auto"]
    args += ["--fidelity", "--json", report_file, "--markdown", markdown, "--repeat", "1"]
    assert main([str(a) for a in args]) == 0
    report = json.loads(report_file.read_text())
    modes = {r["mode"]: r for r in report["modes"]}
    # each package mode once per compute mode (asked twice: once), the stock modes in bf16 only
    assert list(modes) == ["nf4-stock", "nf4", "nf4-stock+int8", "nf4+int8", "nf4-stock+fp8", "nf4+fp8"]
    assert all(m["status"] == "ok" and m["ms_per_step"] > 0 for m in modes.values())
    auto = ["auto"] if resolve(Compute.AUTO, report["device"], compiled=True) is Compute.AUTO else []  # else bf16
    assert report["settings"]["computes"] == ["bf16", "int8", "fp8", *auto]
    assert set(report["fidelity"]["computes"]) == {"int8", "fp8"}  # auto: none of these modes compiles
    table = markdown.read_text()
    step = modes["nf4+fp8"]["ms_per_step"] / modes["nf4"]["ms_per_step"]
    assert f"- denoising step in fp8: nf4+fp8 / nf4 = {step:.2f}x" in table
    nf4 = report["fidelity"]["transformer_relative_error"]
    for name in ("int8", "fp8"):
        e = report["fidelity"]["computes"][name]
        # NF4's own error dominates; the low-precision product adds a little on top of it
        assert all(0 < e["vs_nf4_bf16_relative_error"][t] < nf4[t] for t in nf4)
        # its distance to bf16 differs from NF4's by at most its distance to NF4 (the triangle inequality, the two
        # norms it is measured against being alike)
        assert all(
            abs(e["transformer_relative_error"][t] - nf4[t]) <= 1.1 * e["vs_nf4_bf16_relative_error"][t] for t in nf4
        )
        assert e["psnr_db"] > 20
        assert f"Compute {name} (NF4 weights, {name} products) vs bf16: t=999: " in markdown.read_text()


def test_auto_compute_is_measured_where_it_can_differ_from_bf16():
    """``--compute auto``: the compiled package modes again (eager, auto is bf16, which they were measured in)."""
    from ernie_nf4.benchmark.run import _runs, build_parser
    from ernie_nf4.runtime.compute import Compute

    assert build_parser().parse_args(["--compute", "bf16", "auto", "fp8"]).compute == ["bf16", "auto", "fp8"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--compute", "fp16"])
    modes = ["nf4-stock", "nf4", "nf4-compile", "nf4-low-vram-compile"]
    runs = [(mode, compute.value) for mode, _, compute in _runs(modes, [Compute.BF16, Compute.AUTO, Compute.FP8], None)]
    assert runs == [(m, "bf16") for m in modes] + [("nf4-compile", "auto"), ("nf4-low-vram-compile", "auto")] + [
        (m, "fp8") for m in modes
    ]
