"""The accuracy gate accepts faithful variants and rejects broken ones."""

import pytest

from optimizer.accuracy import forced_agreement, gate, perplexity, random_workload, reference
from optimizer.model import build_model
from optimizer.quantize import quantize_model


@pytest.fixture(scope="module")
def ref():
    baseline = build_model("test")
    prompts, text = random_workload(baseline, n_prompts=6, prompt_len=12, text_len=160)
    return reference(baseline, prompts, text, new_tokens=24)


def test_the_baseline_agrees_with_itself_completely(ref):
    result = gate(build_model("test"), ref)
    assert result.agreement == 1.0
    assert result.ppl_increase == pytest.approx(0.0, abs=1e-6)
    assert result.accepted and result.reason == "within the gate"


def test_int8_weight_only_passes_the_gate(ref):
    result = gate(quantize_model(build_model("test"), "int8-weight-only"), ref)
    assert result.accepted, result.reason
    assert result.agreement >= 0.95


def test_a_deliberately_broken_quantization_is_rejected(ref):
    broken = quantize_model(build_model("test"), "int8-weight-only", bits=2)
    result = gate(broken, ref)
    assert not result.accepted
    assert result.agreement < 0.95
    assert "agreement" in result.reason


def test_perplexity_alone_can_reject(ref):
    windowed = build_model("test")
    windowed.set_sliding_window(8)  # forgets most of the text it is scored on
    result = gate(windowed, ref, min_agreement=0.0)
    assert not result.accepted and "perplexity" in result.reason


def test_thresholds_are_the_callers(ref):
    broken = quantize_model(build_model("test"), "int8-weight-only", bits=2)
    assert gate(broken, ref, min_agreement=0.0, max_ppl_increase=float("inf")).accepted


def test_agreement_is_teacher_forced_per_position(ref):
    model = build_model("test")
    assert forced_agreement(model, ref.prompts, ref.continuations) == 1.0
    other = build_model("test", seed=7)
    assert forced_agreement(other, ref.prompts, ref.continuations) < 0.2
    assert perplexity(other, ref.text) > ref.perplexity
