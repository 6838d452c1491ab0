import pytest
import torch

from ernie_nf4.generation import GenerationRequest, Generator
from ernie_nf4.pe_decoding import compile_decoding, is_compiled, uncompile_decoding

from .conftest import DEVICE

pytestmark = pytest.mark.gpu


def test_compiled_decoding_samples_the_same_tokens_and_serves_other_prompt_lengths(tiny_package, nf4_everywhere):
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    pe = AutoModelForCausalLM.from_pretrained(tiny_package / "pe", dtype=torch.bfloat16, device_map={"": DEVICE})
    prompts = [torch.tensor([[1, 5, 77, 300, 12, 44, 9]], device=DEVICE), torch.tensor([[1, 8, 8, 9]], device=DEVICE)]

    def sample(ids):
        torch.manual_seed(0)
        settings = dict(do_sample=True, temperature=0.6, top_p=0.95, pad_token_id=0, eos_token_id=2)
        return pe.generate(input_ids=ids, max_new_tokens=12, **settings)

    eager = [sample(ids) for ids in prompts]
    compile_decoding(pe)
    assert is_compiled(pe)
    first = sample(prompts[0])
    assert first.shape == eager[0].shape
    if DEVICE == "cpu":  # on a GPU, fused kernels may round differently and pick other tokens
        assert torch.equal(first, eager[0])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # it did compile
    assert torch.equal(sample(prompts[0]), first)  # seeded: the same tokens again
    assert sample(prompts[1]).shape == eager[1].shape
    assert counters["stats"]["unique_graphs"] == graphs  # another prompt length: no recompiling
    uncompile_decoding(pe)
    assert not is_compiled(pe) and pe.generation_config.cache_implementation is None
    assert torch.equal(sample(prompts[0]), eager[0])


def test_a_failing_compiled_decoder_falls_back_to_eager_decoding(tiny_package, nf4_everywhere):
    generator = Generator.from_pretrained(tiny_package, device=DEVICE, max_pe_tokens=6, prompt_cache_size=0)
    request = GenerationRequest("a red boat", width=64, height=64, steps=1, seed=3)
    expected = generator.generate(request).revised_prompt
    pe = generator.pipe.pe
    compile_decoding(pe)
    pe.generation_config.compile_config = None
    broken = {"calls": 0}

    def failing_compiled_call(compile_config):
        def call(*args, **kwargs):
            broken["calls"] += 1
            raise RuntimeError("inductor failed")

        return call

    pe.get_compiled_call = failing_compiled_call
    assert generator.generate(request).revised_prompt == expected
    assert broken["calls"] == 1 and not is_compiled(pe)
