"""Every combination of mode x memory x amp x readout norm x frozen modality x parallel x modality
balancing either is refused when its config is read, with one line, or takes two steps and matches its
reference where the README claims equality (tests/combinations.py says how each is built and compared)."""

import re

import pytest

import combinations as matrix
from capsmm.errors import ConfigError
from conftest import ROOT

COMBOS = matrix.all_combos()
#: a measured figure may exceed the documented one by this factor: the table rounds to one digit
#: ("2e+00" is up to 2.5), and bf16 and float32 sums differ a little between CPUs
DOCUMENTED_SLACK = 2.0


def documented_differences() -> dict[tuple[str, str, str, str, str], float]:
    """(memory, parallel, balance, outcome, amp) -> the relative gradient difference docs/strategies.md's
    table quotes at batch 16, for every row that quotes one."""
    figures = {}
    for memory, parallel, balance, outcome, fp32, bf16 in re.findall(
            r"^\| ([\w-]+) \| ([\w-]+) \| ([\w-]+) \| ([^|]+?) \| \d+ \| [^|]+ \| (\S+) / (\S+) \|",
            (ROOT / "docs" / "strategies.md").read_text(), re.M):
        figures.update({(memory, parallel, balance, outcome, amp): float(v) for amp, v in (("none", fp32), ("bf16", bf16)) if v != "-"})
    return figures


DOCUMENTED = documented_differences()


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
    elif combo.claim().startswith("approximate"):
        bound = DOCUMENTED_SLACK * DOCUMENTED[combo.memory, combo.parallel, combo.balance, combo.claim(), combo.amp]
        assert outcome["difference"] <= bound, f"{combo.id}: relative gradient difference {outcome['difference']:.2e} > {bound:.0e}"
    if combo.parallel == "data" and combo.norm == "batchnorm" and combo.mode not in matrix.capsmm.modes.PEER_MODES:
        # docs/design.md: averaged running means are exactly those of the global batch (float32 sums)
        assert outcome["running_mean_difference"] <= 1e-6, f"{combo.id}: running means differ by {outcome['running_mean_difference']:.2e}"


def test_the_documented_table_quotes_every_approximate_row():
    rows = {(c.memory, c.parallel, c.balance, c.claim(), c.amp) for c in COMBOS if c.claim().startswith("approximate") and not c.expected_refusal()}
    assert rows <= set(DOCUMENTED), rows - set(DOCUMENTED)


def test_a_refused_combination_stops_before_any_data_is_loaded(monkeypatch, tmp_path):
    import capsmm.training

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(capsmm.training, "load_image_dataset", no_data)
    refused = next(c for c in COMBOS if c.expected_refusal() and c.encoders == 1)
    config = matrix.config_for(refused)
    config.out = str(tmp_path)
    with pytest.raises(ConfigError):
        capsmm.training.train(config, log=lambda _: None)
