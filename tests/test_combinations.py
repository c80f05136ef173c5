"""Every combination of mode x memory x amp x readout norm x frozen modality x parallel either is refused
when its config is read, with one line, or takes two steps and matches its reference where the README
claims equality (tests/combinations.py says how each is built and compared)."""

import pytest

import combinations as matrix
from capsmm.errors import ConfigError

COMBOS = matrix.all_combos()


@pytest.fixture(scope="module")
def outcomes():
    """Every combination measured once: single-process ones here, distributed ones in one launch of 2 gloo ranks."""
    return matrix.measure_all()


@pytest.mark.parametrize("combo", COMBOS, ids=[c.id for c in COMBOS])
def test_combination(combo, outcomes):
    outcome = outcomes[combo]
    if combo.expected_refusal():
        assert "refused" in outcome, f"{combo.id} should be refused when its config is read"
        assert "\n" not in outcome["refused"]
        return
    assert "refused" not in outcome, outcome.get("refused")
    assert outcome["trains"] and outcome["moved"], "the trainable parameters did not move"
    assert outcome["frozen_kept"], "a frozen modality's parameters or statistics changed"
    assert all(loss == loss and abs(loss) < float("inf") for loss in outcome["losses"]), outcome["losses"]
    if combo.claim() == "exact":
        assert outcome["difference"] <= matrix.EXACT, f"{combo.id}: relative gradient difference {outcome['difference']:.2e}"


def test_a_refused_combination_stops_before_any_data_is_loaded(monkeypatch, tmp_path):
    import capsmm.training

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(capsmm.training, "load_image_dataset", no_data)
    refused = next(c for c in COMBOS if c.expected_refusal() and not c.frozen)
    config = matrix.config_for(refused)
    config.out = str(tmp_path)
    with pytest.raises(ConfigError):
        capsmm.training.train(config, log=lambda _: None)
