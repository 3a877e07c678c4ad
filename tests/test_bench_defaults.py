"""benchmarks/defaults.py (issue 11): the jobs it plans are the plain commands, and its table is
computed from the runs' own reports. No training here: the plan and the summary are pure."""
import json
from argparse import Namespace

import pytest

from benchmarks import defaults as bench


def _args(**kw) -> Namespace:
    base = dict(device="cpu", quick=False, arch=None, data="D", variants="32px,e150", criteria="bn,l1",
                skip_paper=False, seeds="0,1")
    return Namespace(**{**base, **kw})


def _flags(job) -> list[str]:
    """The job's flags beyond the ones every job of its kind has (data, output, device)."""
    argv = job.argv[job.argv.index("-m") + 2:]
    drop = {"--data", "--out", "--device"}
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if i > 0 or a not in ("train", "compress"):
            out.append(a)
    return out


def test_plan_runs_the_plain_commands(tmp_path):
    jobs = {j.name: j for j in bench.plan(_args(), tmp_path)}
    assert _flags(jobs["parent_s0"]) == ["--seed", "0"]  # train with no tuning flags
    assert _flags(jobs["default70_s1"]) == [str(tmp_path / "parent_s1.pt"), "--seed", "1"]
    assert _flags(jobs["default80_s0"])[1:] == ["--ratio", "0.8", "--seed", "0"]
    assert _flags(jobs["paper_s0"]) == ["--recipe", "paper", "--seed", "0"]
    assert _flags(jobs["paper70_s0"])[1:] == ["--recipe", "paper", "--seed", "0"]
    assert _flags(jobs["bn70_32px_s1"])[1:] == ["--criterion", "bn", "--seed", "1"]
    assert _flags(jobs["parent32_s0"]) == ["--seed", "0", "--img-size", "32"]
    assert "--img-size" not in jobs["default70_32px_s0"].argv  # compress reads the size from its checkpoint
    assert _flags(jobs["default80e150_s1"])[1:] == ["--ratio", "0.8", "--epochs", "150", "--seed", "1"]
    assert "default80e150_32px_s0" in jobs
    assert jobs["default80e150_s1"].after == ["parent_s1"] and jobs["paper70_32px_s0"].after == ["paper32_s0"]
    assert not any(n.startswith("parenthalf") for n in jobs)  # "half" not asked for


def test_only_adds_the_parents_and_refuses_unknown_names(tmp_path):
    jobs = bench.plan(_args(), tmp_path)
    assert {j.name for j in bench._only(jobs, "l170_32px_s1")} == {"l170_32px_s1", "parent32_s1"}
    with pytest.raises(SystemExit, match="no job named nope"):
        bench._only(jobs, "nope,parent_s0")


def _write(runs, name, payload):
    (runs / f"{name}.json").write_text(json.dumps(payload))


def _parent(acc, seconds):
    return {"test_accuracy": acc, "seconds": seconds, "selected_on": "validation split", "macs": 100e6,
            "params": 11e6, "best_epoch": 100, "config": {"epochs": 100},
            "epochs": [{"epoch": 1}]}


def _child(acc, seconds, **extra_seconds):
    return {"accuracy": {"finetuned": acc}, "seconds": {"finetune": seconds, **extra_seconds}, "criterion": "cap",
            "ratio": 0.7, "macs": {"before": 100e6, "after": 10e6}, "params": {"after": 1e6},
            "selected_on": "validation split", "finetune": {"best_epoch": 150},
            "settings": {"train": {"epochs": 150}}}


def test_collect_pairs_each_seed_with_its_own_parent(tmp_path):
    _write(tmp_path, "parent_s0", _parent(0.80, 1000.0))
    _write(tmp_path, "parent_s1", _parent(0.90, 2000.0))
    _write(tmp_path, "default70_s0", _child(0.82, 100.0))
    _write(tmp_path, "default70_s1", _child(0.86, 300.0, step_finetune=50.0, sparsify=50.0))
    _write(tmp_path, "default80_s1", _child(0.85, 200.0))  # seed 0 missing: a one-seed row
    rows = bench.collect(_args(), tmp_path)
    c = rows["compress70"]
    assert c["seeds"] == [0, 1] and c["parent"] == [0.80, 0.90]
    assert c["vs_parent"]["diff"] == pytest.approx(-0.01) and c["vs_parent"]["n"] == 2
    assert c["time_vs_parent"] == pytest.approx([0.1, 0.2])  # sparsity + step fine-tuning count as training
    assert rows["compress80"]["seeds"] == [1] and rows["compress80"]["vs_parent"]["ci95"] == float("inf")
    assert "train_paper" not in rows and "compress80_e150" not in rows  # nothing ran: no row
    md = bench.markdown(rows, {"machine": {"cpu": "X"}, "data": "D", "seeds": [0, 1], "settings": {"device": "cpu"},
                               "command": "python -m benchmarks.defaults"})
    assert "| rtdeploy compress (defaults, ratio 0.7) | 0, 1 |" in md and "10.0x fewer" in md
    assert "-1.00 ± " in md and "| 0.100, 0.200 | 150 | 150, 150 |" in md


def test_criteria_pair_with_the_plain_compress_of_the_same_seeds(tmp_path):
    for s, acc in ((0, 0.80), (1, 0.90), (2, 0.85)):
        _write(tmp_path, f"parent_s{s}", _parent(acc, 1000.0))
        _write(tmp_path, f"default70_s{s}", _child(acc + 0.01, 100.0))
    _write(tmp_path, "bn70_s1", _child(0.93, 100.0))  # seed 1 only: paired with default70_s1, not the mean
    _write(tmp_path, "bn70_s2", _child(0.84, 100.0))
    rows = bench.collect(_args(seeds="0,1,2"), tmp_path)
    d = rows["criterion_bn"]["vs_default"]
    assert d["n"] == 2 and d["diff"] == pytest.approx(((0.93 - 0.91) + (0.84 - 0.86)) / 2)
    assert "vs_default" not in rows["compress70"] and "vs_default" not in rows["train"]
    md = bench.markdown(rows, {"machine": {"cpu": "X"}, "data": "D", "seeds": [0, 1, 2],
                               "settings": {"device": "cpu"}, "command": "python -m benchmarks.defaults"})
    assert "| rtdeploy compress --criterion bn | 1, 2 | validation split | 88.50 ± 6.36 | " in md
    assert bench.plot(rows, str(tmp_path / "d.png")) and (tmp_path / "d.png").stat().st_size > 0
    assert not bench.plot({}, str(tmp_path / "none.png"))


def test_a_criterion_pairs_with_its_own_size_whatever_its_name(tmp_path):
    """The baseline comes from how the row was made, not from its key: a criterion called
    'foo_32px' at 64 px still pairs with the 64 px plain compress."""
    for s in (0, 1):
        _write(tmp_path, f"parent_s{s}", _parent(0.80, 1000.0))
        _write(tmp_path, f"parent32_s{s}", _parent(0.50, 1000.0))
        _write(tmp_path, f"default70_s{s}", _child(0.80, 100.0))
        _write(tmp_path, f"default70_32px_s{s}", _child(0.50, 100.0))
        _write(tmp_path, f"foo_32px70_s{s}", _child(0.79 - 0.01 * s, 100.0))
        _write(tmp_path, f"my_crit70_s{s}", _child(0.81, 100.0))
    _write(tmp_path, "default70_s2", _child(0.80, 100.0))
    _write(tmp_path, "parent_s2", _parent(0.80, 1000.0))
    _write(tmp_path, "my_other70_s2", _child(0.81, 100.0))
    rows = bench.collect(_args(seeds="0,1,2", criteria="foo_32px,my_crit,my_other"), tmp_path)
    assert rows["criterion_foo_32px"]["vs_default"]["diff"] == pytest.approx(-0.015)
    assert rows["criterion_my_crit"]["vs_default"]["seeds"] == [0, 1]
    # the plain compress has 3 seeds here, the criterion 2: the paired cell says which it used
    _write(tmp_path, "my_crit70_s2", _child(0.81, 100.0))
    _write(tmp_path, "default70_s2", _child(0.80, 100.0))
    (tmp_path / "default70_s1.json").unlink()
    rows = bench.collect(_args(seeds="0,1,2", criteria="my_crit"), tmp_path)
    md = bench.markdown(rows, {"machine": {"cpu": "X"}, "data": "D", "seeds": [0, 1, 2],
                               "settings": {"device": "cpu"}, "command": "python -m benchmarks.defaults"})
    line = next(x for x in md.splitlines() if "--criterion my_crit |" in x)
    assert "(seeds 0, 2)" in line
    assert bench.plot(rows, str(tmp_path / "p.png"))
