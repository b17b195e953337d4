"""A non-finite loss or gradient never reaches the parameters: training_update skips the step.

The CPU path checks on the host; the CUDA path hands the flag to the fused optimiser (found_inf),
checked here on the CPU's fused AdamW, which honours it the same way."""

from __future__ import annotations

import copy

import pytest
import torch

from captioner.config import EstimatorConfig
from captioner.estimators import ReinforceBaseline
from captioner.step import training_update
from tests.test_fast_path import _text, _tiny


def _state(model, optimizer):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name,attention,proposal", [("wsram", "hard", "factorised"), ("var", "hard", "none"),
                                                     ("soft", "soft", "none")])
def test_a_non_finite_update_is_skipped_and_counted(fused, name, attention, proposal):
    model = _tiny(attention, proposal).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused or None)
    generator = torch.Generator().manual_seed(3)
    text = _text([3, 2, 4], generator)
    rows = torch.tensor([0, 1, 1])
    inputs = torch.randn(2, 3, 24, 24, generator=generator)
    estimator, baseline = EstimatorConfig(name=name, samples=3), ReinforceBaseline()
    good = training_update(model, optimizer, inputs, "images", rows, text, estimator, baseline, 5.0,
                           generator=torch.Generator().manual_seed(1))
    assert float(good["skipped"]) == 0.0 and torch.isfinite(good["loss"])
    before = _state(model, optimizer)
    baseline_before = None if baseline.value is None else baseline.value.clone()
    bad_inputs = inputs.clone()
    bad_inputs[1, 0, 5, 5] = float("nan")  # one bad pixel: NaN loss and gradients
    bad = training_update(model, optimizer, bad_inputs, "images", rows, text, estimator, baseline, 5.0,
                          generator=torch.Generator().manual_seed(2))
    assert float(bad["skipped"]) == 1.0 and not torch.isfinite(bad["loss"])
    after = _state(model, optimizer)
    for key, value in before[0].items():
        assert torch.equal(value, after[0][key]), key
    assert before[1]["state"].keys() == after[1]["state"].keys()
    for index, moments in before[1]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, after[1]["state"][index][key]), (index, key)
    if baseline_before is not None:
        assert torch.equal(baseline.value, baseline_before)  # VAR's moving average kept its value
    again = training_update(model, optimizer, inputs, "images", rows, text, estimator, baseline, 5.0,
                            generator=torch.Generator().manual_seed(1))
    assert float(again["skipped"]) == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
