"""RequestOutputKind: CUMULATIVE outputs carry everything so far, DELTA only what is new
(their concatenation is the cumulative output, stop-string holdback included), FINAL_ONLY
nothing until the request finishes. `LLM.generate` asks for final outputs only."""

from __future__ import annotations

import dataclasses

import pytest

from loraplex import LLM, RequestOutputKind, SamplingParams

PROMPTS = ["The cat sat on", "Numbers: 1 2 3", "def main():"]
PARAMS = SamplingParams(n=2, temperature=0.9, seed=4, max_tokens=20, stop=[" the", "e"], logprobs=2)


@pytest.fixture(scope="module")
def engine(tiny_model_dirs, test_device):
    llm = LLM(tiny_model_dirs["llama"], dtype="float32", device=test_device, max_model_len=256)
    return llm.llm_engine


def run(engine, kind: RequestOutputKind) -> dict[str, list]:
    """Every output of every request, in order, keyed by request id."""
    params = dataclasses.replace(PARAMS, output_kind=kind)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"{kind.name}-{i}", prompt, params)
    seen: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            seen.setdefault(output.request_id, []).append(output)
    return {rid.split("-", 1)[1]: outputs for rid, outputs in seen.items()}


def completions(output):
    return [(c.token_ids, c.text, c.logprobs, c.finish_reason) for c in output.outputs]


def test_deltas_add_up_to_the_cumulative_output(engine):
    cumulative = run(engine, RequestOutputKind.CUMULATIVE)
    deltas = run(engine, RequestOutputKind.DELTA)
    for key, outputs in cumulative.items():
        final = outputs[-1]
        assert final.finished and len(deltas[key]) == len(outputs)
        for index, want in enumerate(final.outputs):
            parts = [o.outputs[index] for o in deltas[key]]
            assert sum((p.token_ids for p in parts), []) == want.token_ids
            assert "".join(p.text for p in parts) == want.text
            assert sum((p.logprobs for p in parts), []) == want.logprobs
            assert parts[-1].finish_reason == want.finish_reason
            assert parts[-1].cumulative_logprob == want.cumulative_logprob
        # Deltas really are partial: no step repeats an earlier token.
        assert all(len(o.outputs[0].token_ids) <= 1 for o in deltas[key])


def test_final_only_sends_one_output_per_request(engine):
    cumulative = run(engine, RequestOutputKind.CUMULATIVE)
    final_only = run(engine, RequestOutputKind.FINAL_ONLY)
    for key, outputs in final_only.items():
        assert len(outputs) == 1 and outputs[0].finished
        assert completions(outputs[0]) == completions(cumulative[key][-1])
    assert any(len(outputs) > 1 for outputs in cumulative.values())


def test_generate_leaves_the_callers_params_alone(tiny_model_dirs, test_device):
    llm = LLM(tiny_model_dirs["llama"], dtype="float32", device=test_device, max_model_len=256)
    params = SamplingParams(temperature=0, max_tokens=5)
    [output] = llm.generate(PROMPTS[0], params)
    assert len(output.outputs[0].token_ids) == 5 and output.finished
    assert params.output_kind is RequestOutputKind.CUMULATIVE


def test_output_kind_must_be_the_enum():
    with pytest.raises(ValueError, match="output_kind must be a RequestOutputKind"):
        SamplingParams(output_kind="delta")
