"""``residency.Residency``: low-vram's models take turns in one arena, each at the same addresses every time."""

import gc
import mmap
import os

import pytest
import torch

from ernie_nf4.prompt_enhancer.decoding import PEDecoder, tensor_fingerprint
from ernie_nf4.runtime.residency import ALIGNMENT, Residency, host_buffer, plan_offsets

from .support.fixtures import model_tensors

pytestmark = pytest.mark.nf4


def padded(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


@pytest.mark.parametrize("sizes", [[], [0], [1], [256], [257, 1, 0, 512, 3, 100_000], [2] * 5])
@pytest.mark.parametrize("alignment", [ALIGNMENT, 64])
def test_plan_aligns_every_tensor_and_packs_them_without_overlap(sizes, alignment):
    offsets, total = plan_offsets(sizes, alignment)
    assert len(offsets) == len(sizes) and total % alignment == 0
    assert all(offset % alignment == 0 for offset in offsets)
    ends = [offset + size for offset, size in zip(offsets, sizes, strict=True)]
    for end, following in zip(ends, offsets[1:], strict=False):
        assert end <= following < end + alignment  # disjoint, and no wider gap than the alignment needs
    assert total == (-(-ends[-1] // alignment) * alignment if sizes else 0)
    assert total == sum(-(-size // alignment) * alignment for size in sizes)


def test_plan_refuses_bad_arguments_by_name():
    with pytest.raises(ValueError, match="alignment must be a positive power of two, got 48"):
        plan_offsets([1], 48)
    with pytest.raises(ValueError, match="sizes must not be negative, got -1"):
        plan_offsets([4, -1])


@pytest.mark.parametrize("nbytes", [0, 1, mmap.PAGESIZE - 1, mmap.PAGESIZE, mmap.PAGESIZE + 1, 3_000_001])
def test_host_buffers_sit_on_whole_pages_of_their_own(nbytes):
    """CUDA locks whole pages, and refuses a buffer whose page another locked buffer holds."""
    buffers = [host_buffer(nbytes) for _ in range(3)]
    spans = []
    for buffer in buffers:
        assert buffer.dtype == torch.uint8 and buffer.data_ptr() % mmap.PAGESIZE == 0
        # its storage is its own pages, from its first byte: PyTorch's ``is_pinned`` asks CUDA about the storage's
        assert buffer.untyped_storage().data_ptr() == buffer.data_ptr()
        assert buffer.untyped_storage().nbytes() == buffer.numel()
        assert buffer.numel() % mmap.PAGESIZE == 0 and nbytes <= buffer.numel() < nbytes + mmap.PAGESIZE
        buffer.fill_(7)  # all of it is writable memory
        spans.append((buffer.data_ptr(), buffer.data_ptr() + buffer.numel()))
    spans.sort()
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_writes_to_its_own_copy_of_a_host_buffer():
    buffer = host_buffer(3 * mmap.PAGESIZE).fill_(1)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        buffer.fill_(2)
        os._exit(0 if int(buffer[-1]) == 2 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(buffer.min()) == int(buffer.max()) == 1  # the parent's models are not the child's to change


class Toy(torch.nn.Module):
    """The kinds of tensor a residency meets: a weight tied across two modules, another parameter on the same
    memory as a bias, a non-contiguous parameter, a 0-d float64 buffer and a bool buffer."""

    def __init__(self, width: int):
        super().__init__()
        self.first = torch.nn.Linear(width, width)
        self.second = torch.nn.Linear(width, width)
        self.second.weight = self.first.weight
        self.shared = torch.nn.Parameter(self.first.bias.data)
        self.transposed = torch.nn.Parameter(torch.randn(3, width).t())
        self.register_buffer("scale", torch.tensor(0.5, dtype=torch.float64))
        self.register_buffer("keep", torch.arange(width) % 2 == 0)

    def forward(self, x):
        y = self.second(self.first(x)) + self.shared
        return (torch.where(self.keep, y, -y) * self.scale.float()) @ self.transposed.contiguous()  # same rounding

    def unique_sizes(self) -> list[int]:
        w = self.first.in_features
        return [w * w * 4, w * 4, w * 4, 3 * w * 4, 8, w]  # first.weight, first.bias (= shared), second.bias, ...


@torch.no_grad()
def test_models_take_turns_in_one_arena_at_the_same_addresses():
    torch.manual_seed(0)
    models = {"small": Toy(8), "large": Toy(32)}
    inputs = {name: torch.randn(2, model.first.in_features) for name, model in models.items()}
    expected = {name: model(inputs[name]) for name, model in models.items()}
    transposed = models["small"].transposed.detach().clone()
    residency = Residency("cpu")
    for name, model in models.items():
        residency.add(name, model)
    assert residency.bytes("small") == sum(Toy(8).unique_sizes())  # each shared tensor once
    assert residency.arena_bytes == sum(padded(size) for size in models["large"].unique_sizes())
    addresses = {}
    for name in ("small", "large", "small", "large"):
        residency.use(name)
        model = models[name]
        fingerprint = tensor_fingerprint(model)
        assert addresses.setdefault(name, fingerprint) == fingerprint
        assert torch.equal(model(inputs[name]), expected[name])
        start = min(fingerprint)
        assert all((pointer - start) % ALIGNMENT == 0 for pointer in fingerprint)
        assert max(fingerprint) - start < residency.arena_bytes
    assert min(addresses["small"]) == min(addresses["large"])  # both laid out from the arena's first byte
    assert tensor_fingerprint(models["small"]) != addresses["small"]  # it left: back on its CPU copies
    small = models["small"]
    residency.use("small")
    assert small.second.weight is small.first.weight and small.shared.data_ptr() == small.first.bias.data_ptr()
    assert small.transposed.is_contiguous() and torch.equal(small.transposed, transposed)


@torch.no_grad()
def test_a_larger_model_added_later_grows_the_arena_and_release_and_close_go_back_to_the_cpu_copies():
    torch.manual_seed(0)
    small, large = Toy(8), Toy(32)
    x_small, x_large = torch.randn(2, 8), torch.randn(2, 32)
    expected_small, expected_large = small(x_small), large(x_large)
    residency = Residency("cpu")
    residency.add("small", small)
    on_cpu = tensor_fingerprint(small)
    residency.use("small")
    before = residency.arena_bytes
    residency.add("large", large)
    assert residency.arena_bytes > before
    residency.use("large")
    assert torch.equal(large(x_large), expected_large)
    residency.use("small")
    assert torch.equal(small(x_small), expected_small)
    residency.release()
    assert residency.resident is None and tensor_fingerprint(small) == on_cpu
    residency.use("small")
    residency.close()
    assert residency.resident is None and tensor_fingerprint(small) == on_cpu
    residency.use("small")
    assert torch.equal(small(x_small), expected_small)


@torch.no_grad()
def test_pe_kv_cache_lives_in_the_arena_behind_the_pe_and_outlasts_other_models_there(tiny_package, nf4_everywhere):
    import functools
    import math

    from transformers import AutoModelForCausalLM

    from ernie_nf4.prompt_enhancer.decoding import StaticKV, model_parts

    pe = AutoModelForCausalLM.from_pretrained(tiny_package / "pe", dtype=torch.bfloat16, device_map={"": "cpu"})
    ids = torch.tensor([[1, 5, 77, 300, 12, 44, 9]])
    expected, _ = PEDecoder(pe, graphs=False).generate(ids, 12, seed=3)  # (a forward before add: see fixtures)
    residency = Residency("cpu")
    residency.add("pe", pe)
    cache_bytes = StaticKV.nbytes(model_parts(pe), 512, torch.bfloat16)
    big = Toy(int(math.sqrt((residency.bytes("pe") + cache_bytes) / 4)) + 64)  # room for the PE and its cache
    residency.add("big", big)
    residency.use("pe")
    decoder = PEDecoder(pe, graphs=False, cache_storage=functools.partial(residency.scratch, "pe"))
    tokens, _ = decoder.generate(ids, 12, seed=3)
    storage = decoder.cache.storage
    arena_start = min(tensor_fingerprint(pe))  # the PE is laid out from the arena's first byte
    assert storage is not None and storage.data_ptr() >= max(tensor_fingerprint(pe))
    assert storage.data_ptr() + storage.numel() <= arena_start + residency.arena_bytes + ALIGNMENT
    assert torch.equal(tokens, expected)
    residency.use("big")  # written over the cache
    assert residency.scratch("pe", 16) is None  # only while the PE is the model there
    residency.use("pe")
    again, _ = decoder.generate(ids, 12, seed=3)
    assert decoder.cache.storage.data_ptr() == storage.data_ptr() and torch.equal(again, expected)
    assert residency.scratch("pe", residency.arena_bytes) is None  # does not fit: the decoder allocates its own


# --- on a GPU: the tiny NF4 pipeline in low-vram mode ---------------------------------------------------------------


@pytest.mark.cuda
@torch.no_grad()
def test_low_vram_holds_only_the_arena_and_puts_each_model_at_the_same_addresses(tiny_package):
    from ernie_nf4.runtime.loader import load_pipeline

    loaded = load_pipeline(tiny_package, memory_mode="low-vram")
    residency, pipe = loaded.residency, loaded.pipe
    gc.collect()
    base = torch.cuda.memory_allocated()
    addresses = {}
    for name in ("pe", "transformer", "text_encoder", "pe", "transformer"):
        residency.use(name)
        gc.collect()
        # the arena is all the models hold on the GPU: nothing of the one that left stays behind
        assert residency.arena_bytes <= torch.cuda.memory_allocated() - base < residency.arena_bytes + 512
        assert all(t.is_cuda for t in model_tensors(getattr(pipe, name)))
        for other in set(residency.names) - {name}:
            assert all(t.device.type == "cpu" and t.is_pinned() for t in model_tensors(getattr(pipe, other)))
        fingerprint = tensor_fingerprint(getattr(pipe, name))
        assert addresses.setdefault(name, fingerprint) == fingerprint
    assert len({min(fingerprint) for fingerprint in addresses.values()}) == 1  # one arena, from its first byte
    ids = torch.tensor([[1, 5, 77, 300, 12]], device="cuda")
    residency.use("pe")
    logits = pipe.pe(input_ids=ids).logits
    residency.use("transformer")
    residency.use("pe")
    assert torch.equal(pipe.pe(input_ids=ids).logits, logits)


@pytest.mark.cuda
def test_pe_graph_captured_once_serves_requests_across_low_vram_moves(tiny_package):
    from ernie_nf4.runtime.loader import load_pipeline

    loaded = load_pipeline(tiny_package, memory_mode="low-vram")
    residency, pipe = loaded.residency, loaded.pipe
    ids = torch.tensor([[1, 5, 77, 300, 12, 44, 9]], device="cuda")
    residency.use("pe")
    decoder = PEDecoder(pipe.pe, graphs=True, chunk_tokens=4)
    first, _ = decoder.generate(ids, 21, seed=11)
    start = min(tensor_fingerprint(pipe.pe))
    residency.use("transformer")
    assert min(tensor_fingerprint(pipe.transformer)) == start  # the transformer was written over the PE's bytes
    residency.use("pe")
    again, _ = decoder.generate(ids, 21, seed=11)
    assert decoder.broken is None and decoder.captures == 1
    assert torch.equal(again, first)


@pytest.mark.cuda
@torch.no_grad()
def test_a_move_is_queued_without_waiting_and_what_follows_runs_after_it():
    """``use`` returns while its copy still runs (the host gets on with the next work), yet the work queued after it
    reads the copied weights, and ``seconds_moving`` counts the copy's time on the GPU."""
    torch.manual_seed(0)
    # two models of 512 MiB each (~10 ms from page-locked memory), taking turns at the same addresses: a product
    # that ran before its model's copy ended would read the other one's weights
    models = {name: torch.nn.Linear(16384, 16384, bias=False, dtype=torch.bfloat16) for name in ("a", "b")}
    x = torch.randn(1, 16384, dtype=torch.bfloat16).cuda()
    expected = {name: model.cuda()(x).cpu() for name, model in models.items()}
    assert not torch.equal(expected["a"], expected["b"])
    residency = Residency("cuda")
    for name, model in models.items():
        residency.add(name, model)
    for name in ("a", "b", "a", "b", "a"):
        torch.cuda.synchronize()
        moved = residency.seconds_moving
        residency.use(name)
        assert not torch.cuda.current_stream().query()  # the copy is still running
        assert torch.equal(models[name](x).cpu(), expected[name])  # queued behind the copy: its weights are there
        seconds = residency.seconds_moving - moved
        assert 512 * 2**20 / 200e9 < seconds < 5  # under 200 GB/s is a real copy; and it did end
    for _ in range(20):  # moves nobody reads the time of are counted as they end, not kept
        residency.use("a")
        residency.use("b")
        torch.cuda.synchronize()
    assert len(residency._moves) <= 2  # at most the last two moves, not all 40


@pytest.mark.cuda
@torch.no_grad()
def test_cpu_copies_are_page_locked_as_they_are_not_rounded_up_by_the_pinned_memory_cache():
    """The CPU copies lock their own bytes: PyTorch's pinned-memory cache (``pin_memory=True``), which rounds every
    block up to a power of two, gives them nothing. A model of odd sizes shows it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3000, 1001), torch.nn.Linear(1001, 77)).to(torch.bfloat16)
    x = torch.randn(2, 3000, dtype=torch.bfloat16)
    expected = model.cuda()(x.cuda()).cpu()

    def pinned_cache():
        return {k: v for k, v in torch.cuda.host_memory_stats().items() if k.endswith("bytes.current")}

    before = pinned_cache()
    assert before  # the statistics this test reads exist
    residency = Residency("cuda")
    residency.add("m", model)
    assert pinned_cache() == before
    assert all(t.device.type == "cpu" and t.is_pinned() for t in model_tensors(model))
    residency.use("m")
    assert torch.equal(model(x.cuda()).cpu(), expected)
    residency.release()
    assert all(t.device.type == "cpu" and t.is_pinned() for t in model_tensors(model))


@pytest.mark.cuda
def test_page_lock_reports_a_refusal_without_leaving_an_error_behind_and_unlocks_when_collected(caplog):
    from ernie_nf4.runtime.residency import page_lock

    memory = torch.empty(3_000_001, dtype=torch.uint8)
    buffer = memory[:]  # another tensor object on the same memory; ``memory`` outlives it
    assert page_lock(buffer) and memory.is_pinned()
    assert not page_lock(memory)  # CUDA refuses to lock the same memory twice
    assert "could not page-lock 0.00 GB of CPU memory for CUDA" in caplog.text
    assert "already" in caplog.text.lower()  # CUDA's own reason, in words
    assert torch.zeros(4, device="cuda").add_(1).sum().item() == 4  # the refusal did not surface in a later launch
    del buffer
    gc.collect()
    assert not memory.is_pinned()  # unlocked when the buffer that locked it was collected
    assert page_lock(memory)
    assert page_lock(torch.empty(0, dtype=torch.uint8))  # nothing to lock
