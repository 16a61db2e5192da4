"""Interleaved side-by-side measurement: every arm timed in every round, ratios per round, and a
goal met only when the whole spread clears it."""

from optimizer.abtest import Arm, interleaved_decode, ratios_against, same_tokens, spread, verdict
from optimizer.bench import Variant, build_variant, random_prompts


def test_a_goal_is_met_only_when_every_round_clears_it():
    assert verdict([1.31, 1.35, 1.4], 1.3) == "met"
    assert verdict([1.28, 1.35, 1.4], 1.3) == "not met (spread crosses the goal)"
    assert verdict([1.1, 1.2], 1.3) == "not met"
    s = spread([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)


def test_ratios_are_per_round_against_the_baseline_of_that_round():
    r = ratios_against({"a": [2.0, 4.0], "b": [1.0, 4.0]}, "a")
    assert r["a"]["values"] == [1.0, 1.0] and r["b"]["values"] == [2.0, 1.0]


def test_every_arm_is_timed_in_every_round_alternating():
    arms = [Arm(n, *build_variant("test", Variant.parse(n), "cpu"))
            for n in ("fp32", "fp32+int8-weight-only")]
    seen = []
    prompts = random_prompts(arms[0].model.args.vocab_size, 1, 6, 0)
    m = interleaved_decode(arms, prompts, 4, rounds=3, on_measure=lambda name, r, s: seen.append((r, name)))
    assert seen == [(0, "fp32"), (0, "fp32+int8-weight-only"), (1, "fp32+int8-weight-only"), (1, "fp32"),
                    (2, "fp32"), (2, "fp32+int8-weight-only")]
    assert all(len(v) == 3 and all(s > 0 for s in v) for v in m["step_s"].values())
    assert set(m["same_tokens"]) == {"fp32", "fp32+int8-weight-only"}
    assert m["clocks"]["fp32"] == [None, None, None]  # no GPU here: no clocks, said so


def test_arms_with_the_same_tokens_list_each_other():
    assert same_tokens({"a": [[1, 2]], "b": [[1, 2]], "c": [[1, 3]]}) == {"a": ["b"], "b": ["a"], "c": []}
