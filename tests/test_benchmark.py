"""The cost benchmark: its memory meter, and its records on a tiny configuration."""

import json
import types
from itertools import accumulate

import pytest
import torch
from torch import nn

import capsmm.benchmark
import capsmm.profiling
from capsmm.errors import ConfigError
from capsmm.benchmark import DEFAULT_OPTIONS, backward_floor, measure_backbone, parse_options
from capsmm.profiling import PhaseTimer, TensorMemoryMeter
from capsmm.plotting import cost_tradeoff_points
from conftest import load_script

bench = load_script("bench")


def test_meter_counts_allocations_until_freed_and_not_views():
    with TensorMemoryMeter() as meter:
        a = torch.zeros(1024, 256)  # 1 MiB
        view = a[:10].t()
        b = a + 1  # another MiB
        a.add_(1)  # in place: no new memory
        del b
    assert meter.peak == 2 * 2**20
    assert meter.current == 2**20
    del a, view
    assert meter.current == 0


def test_meter_peak_without_kept_tensors_replays_the_allocations():
    with TensorMemoryMeter() as meter:
        temporary = torch.zeros(2 * 1024, 256)  # 2 MiB, freed before the kept tensor exists
        del temporary
        kept = torch.zeros(1024, 256)  # 1 MiB, allocated after the peak (like lean's gradients)
    assert meter.peak == 2 * 2**20
    assert meter.peak_without([kept]) == 2 * 2**20  # peak - kept bytes would say 1 MiB
    with TensorMemoryMeter() as meter:
        kept = torch.zeros(1024, 256)
        temporary = torch.zeros(2 * 1024, 256)
        del temporary
    assert meter.peak == 3 * 2**20 and meter.peak_without([kept]) == 2 * 2**20


def test_meter_sees_tensors_saved_for_backward():
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(512, 256)
    with TensorMemoryMeter() as meter:
        loss = (x @ w).relu().sum()
        saved = meter.current
        loss.backward()
    assert saved >= 512 * 256 * 4  # the relu output is kept for backward


def test_options_product():
    sets = parse_options(["adam_impl=foreach,fused", "channels_last=false,true"])
    assert [(s["adam_impl"], s["channels_last"]) for s in sets] == [("foreach", False), ("foreach", True), ("fused", False), ("fused", True)]
    with pytest.raises(ConfigError, match="KEY one of"):
        parse_options(["speed=fast"])


def test_bench_records_and_lean_memory(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = bench.main(["--backbones", "vgg8", "--modes", "bp,caps,caps-full,caps-lean", "--width-mult", "0.25",
                       "--batch-size", "32", "--iters", "2", "--warmup", "1", "--json", str(path), "--plot", str(tmp_path / "tradeoff.png")])
    assert code == 0 and (tmp_path / "tradeoff.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "| vgg8 | caps-lean |" in out and "backward floor" in out
    records = {r["mode"]: r for r in json.loads(path.read_text())}
    assert set(records) == {"bp", "caps", "caps-full", "caps-lean"}
    for record in records.values():
        assert {"backbone", "mode", "params_m", "peak_memory_mib", "forward_ms", "backward_ms", "step_ms"} <= set(record)
    # one block's graph at a time: less activation memory than any mode that keeps every block's graph
    assert records["caps-lean"]["activation_mib"] < 0.8 * records["caps"]["activation_mib"]
    assert records["caps-lean"]["activation_mib"] < records["bp"]["activation_mib"]
    assert records["caps"]["params_m"] == records["caps-lean"]["params_m"] > records["bp"]["params_m"]
    # the floor is one block's own working set: a lower bound of what lean measured, above zero
    assert 0 < records["caps-lean"]["lean_floor_mib"] <= records["caps-lean"]["activation_mib"]
    assert "lean floor: block" in out
    # the trade-off figure's points: memory against bp's, time against plain caps's, from the same records
    points = {label: (x, y) for label, x, y in cost_tradeoff_points(json.loads(path.read_text()))["vgg8"]}
    assert points["caps"][1] == 1.0 and points["bp"][0] == 1.0
    assert points["caps-lean"] == pytest.approx((records["caps-lean"]["activation_mib"] / records["bp"]["activation_mib"],
                                                 records["caps-lean"]["step_ms"] / records["caps"]["step_ms"]))
    assert bench.main(["--modes", "bp,caps-lean", "--plot", str(tmp_path / "no.png")]) == 2  # nothing to time against
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "no.png").exists()


def test_the_tradeoff_times_each_variant_against_caps_with_its_own_speed_options():
    def record(mode, label, amp, step, activation, lean_segments=1):
        return {"backbone": "vgg11", "mode": mode, "label": label, "step_ms": step, "activation_vs_bp": activation,
                "options": dict(DEFAULT_OPTIONS, amp=amp, lean_segments=lean_segments)}

    records = [record("bp", "bp", "none", 10.0, 1.0), record("caps", "caps", "none", 8.0, 1.1),
               record("caps-lean", "caps-lean lean_segments=2", "none", 12.0, 0.4, 2),
               record("bp", "bp amp=bf16", "bf16", 6.0, 1.0), record("caps", "caps amp=bf16", "bf16", 4.0, 1.1),
               record("caps-lean", "caps-lean amp=bf16 lean_segments=2", "bf16", 5.0, 0.4, 2)]
    points = {label: y for label, _, y in cost_tradeoff_points(records)["vgg11"]}
    assert points == {"bp": 1.25, "caps": 1.0, "caps-lean lean_segments=2": 1.5,
                      "bp amp=bf16": 1.5, "caps amp=bf16": 1.0, "caps-lean amp=bf16 lean_segments=2": 1.25}
    with pytest.raises(ConfigError, match="no caps record with the options of 'bp amp=bf16'"):
        cost_tradeoff_points([r for r in records if r["label"] != "caps amp=bf16"])


def test_lean_keep_is_a_lean_only_option(capsys):
    records, _ = measure_backbone("mlp", ["bp", "caps-lean"], parse_options(["lean_keep=0,1"]), dataset="digits",
                                  batch_size=16, iters=1, warmup=0, width_mult=0.05, device=torch.device("cpu"), floor=False,
                                  log=lambda line: None)
    assert [r["label"] for r in records] == ["bp", "caps-lean", "caps-lean lean_keep=1"]  # no second bp
    for lean in records[1:]:
        assert lean["step_vs_bp"] == pytest.approx(lean["step_ms"] / records[0]["step_ms"])


def test_lean_segments_rows_and_their_lower_peak():
    records, _ = measure_backbone("vgg8", ["bp", "caps-lean"], parse_options(["lean_segments=1,4"]), dataset="cifar10",
                                  batch_size=32, iters=1, warmup=0, width_mult=0.25, device=torch.device("cpu"), floor=False,
                                  log=lambda line: None)
    assert [r["label"] for r in records] == ["bp", "caps-lean", "caps-lean lean_segments=4"]
    whole, split = records[1], records[2]
    assert split["activation_mib"] < 0.7 * whole["activation_mib"]  # VGG's first block split in 4
    assert split["activation_mib"] < whole["lean_floor_mib"]  # below what any whole block needs
    for bad in (["lean_segments=two"], ["lean_segments=0"]):
        with pytest.raises(ConfigError) as info:
            measure_backbone("mlp", ["caps-lean"], parse_options(bad), dataset="digits", batch_size=16, iters=1, warmup=0,
                             width_mult=0.05, device=torch.device("cpu"), memory=False, floor=False, log=lambda line: None)
        assert "\n" not in str(info.value)


def fake_clock(monkeypatch, phases_ms):
    """Make PhaseTimer read a clock that advances by exactly ``phases_ms`` (one duration per phase,
    in the order the phases run) between each phase's start and end, and not at all between phases."""
    ends = list(accumulate(phases_ms))
    readings = iter(t / 1000 for pair in zip([0.0, *ends], ends) for t in pair)
    monkeypatch.setattr(capsmm.profiling, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    return readings


# (forward, backward, optimizer) ms of three steps: the medians of the phases sum to 5 + 5 + 0 = 10 ms,
# but every step took 11 ms; step_ms must be the median of the steps, 11
STEPS_MS = [(1.0, 10.0, 0.0), (10.0, 1.0, 0.0), (5.0, 5.0, 1.0)]


def test_phase_timer_step_is_the_median_of_whole_steps_not_the_sum_of_phase_medians(monkeypatch):
    readings = fake_clock(monkeypatch, [ms for step in STEPS_MS for ms in step])
    timer = PhaseTimer(torch.device("cpu"))
    for _ in STEPS_MS:
        for name in ("forward", "backward", "optimizer"):
            with timer.phase(name):
                pass
    assert timer.collect() == pytest.approx({"forward_ms": 5.0, "backward_ms": 5.0, "optimizer_ms": 0.0, "step_ms": 11.0})
    assert next(readings, None) is None and timer.collect() == {}  # every reading used; collect() resets


def test_bench_step_time_is_the_median_of_whole_steps(monkeypatch):
    readings = fake_clock(monkeypatch, [ms for step in STEPS_MS for ms in step])
    [record], _ = measure_backbone("mlp", ["bp"], parse_options([]), dataset="digits", batch_size=8, iters=3, warmup=1,
                                   width_mult=0.05, device=torch.device("cpu"), memory=False, floor=False, log=lambda line: None)
    assert next(readings, None) is None  # the three timed steps read the clock, the warm-up step did not
    assert [record[k] for k in ("forward_ms", "backward_ms", "optimizer_ms", "step_ms")] == pytest.approx([5.0, 5.0, 0.0, 11.0])


def test_backward_floor_adds_weight_and_input_gradients_of_every_layer_but_the_first_input(monkeypatch):
    """Each gradient "takes" as many ms as it has elements: the floor is then a count of elements."""

    def elements_as_ms(fn, reps):
        return float(sum(g.numel() for g in fn()))

    monkeypatch.setattr(capsmm.benchmark, "_time_ms", elements_as_ms)
    model = capsmm.build_model("mlp", num_classes=10, in_shape=(1, 8, 8), mode="bp", hidden=16, depth=3)
    linears = [m for m in model.encoders.modules() if isinstance(m, nn.Linear)]
    batch = 4
    weight = sum(p.numel() for layer in linears for p in layer.parameters())
    inputs = sum(batch * layer.in_features for layer in linears[1:])  # no mode computes the images' gradient
    figures = backward_floor(model, torch.randn(batch, 1, 8, 8))
    assert len(linears) == 3 and figures == pytest.approx({"weight_grad_ms": weight, "input_grad_ms": inputs, "floor": weight / (weight + inputs)})
