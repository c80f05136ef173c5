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


#: the distributed combinations that train, measured in chunks of one 2-rank launch each, so that each
#: pytest-xdist worker measures only the chunks it runs; round-robin chunks mix modes and kinds, so they
#: take alike
DISTRIBUTED_CHUNKS = 4
LAUNCHED = [c for c in COMBOS if c.world > 1 and not c.expected_refusal()]
IN_ONE_PROCESS = [c for c in COMBOS if c.world == 1 or c.expected_refusal()]


def problems(combo: matrix.Combo, outcome: dict) -> list[str]:
    """What is wrong with ``combo``'s outcome against the README's claim for it (empty: nothing)."""
    if combo.expected_refusal():
        if "refused" not in outcome:
            return [f"{combo.id} should be refused when its config is read"]
        return [f"{combo.id}: the refusal is not one line"] if "\n" in outcome["refused"] else []
    if "refused" in outcome:
        return [f"{combo.id} refused: {outcome['refused']}"]
    found = []
    if not (outcome["trains"] and outcome["moved"]):
        found.append(f"{combo.id}: the trainable parameters did not move")
    if not outcome["frozen_kept"]:
        found.append(f"{combo.id}: a frozen modality's parameters or statistics changed")
    if not all(loss == loss and abs(loss) < float("inf") for loss in outcome["losses"]):
        found.append(f"{combo.id}: losses {outcome['losses']}")
    bound = None
    if combo.claim() == "exact":
        bound = matrix.EXACT
    elif combo.claim().startswith("approximate"):
        bound = DOCUMENTED_SLACK * DOCUMENTED[combo.memory, combo.parallel, combo.balance, combo.claim(), combo.amp]
    if bound is not None and not outcome["difference"] <= bound:
        found.append(f"{combo.id}: relative gradient difference {outcome['difference']:.2e} > {bound:.0e}")
    if combo.parallel == "data" and combo.norm == "batchnorm" and combo.mode not in matrix.capsmm.modes.PEER_MODES:
        # docs/design.md: averaged running means are exactly those of the global batch (float32 sums)
        if not outcome["running_mean_difference"] <= 1e-6:
            found.append(f"{combo.id}: running means differ by {outcome['running_mean_difference']:.2e}")
    return found


@pytest.mark.parametrize("combo", IN_ONE_PROCESS, ids=[c.id for c in IN_ONE_PROCESS])
def test_combination(combo):
    assert not problems(combo, matrix.measure([combo])[combo])


@pytest.mark.parametrize("chunk", range(DISTRIBUTED_CHUNKS), ids=lambda i: f"chunk{i}")
def test_distributed_combinations(chunk):
    combos = LAUNCHED[chunk::DISTRIBUTED_CHUNKS]
    outcomes = matrix.measure(combos)
    assert not [problem for combo in combos for problem in problems(combo, outcomes[combo])]


def test_the_problems_check_catches_a_wrong_outcome():
    """Fault injection: each way an outcome can be wrong is reported, for an exact, an approximate and
    a data-parallel batch-norm combination, and for a refused one."""
    good = {"difference": 0.0, "losses": [1.0], "moved": True, "frozen_kept": True, "trains": True, "running_mean_difference": 0.0}
    exact = next(c for c in LAUNCHED if c.claim() == "exact")
    approximate = next(c for c in LAUNCHED if c.claim().startswith("approximate"))
    averaged = next(c for c in LAUNCHED if c.parallel == "data" and c.norm == "batchnorm" and c.mode == "caps")
    refused = next(c for c in COMBOS if c.expected_refusal())
    for combo in (exact, approximate, averaged):
        assert problems(combo, good) == [], combo.id
        for change in ({"difference": 1e3}, {"losses": [float("nan")]}, {"moved": False}, {"frozen_kept": False}, {"trains": False}):
            assert problems(combo, good | change), (combo.id, change)
        assert problems(combo, {"refused": "no"})
    assert problems(averaged, good | {"running_mean_difference": 1e-3})
    assert problems(refused, {"refused": "one line"}) == []
    assert problems(refused, {"refused": "two\nlines"}) and problems(refused, good)


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
