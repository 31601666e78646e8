"""``experiments.inr_scaling``: labels and records per training-set size, the table / figure from hand-made records,
the command line and the data the study hands to ``run_many`` for sizes beyond the cached zoo. Nothing trains."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from experiments import inr_scaling as study


def rec(label_base, size, seed, acc, *, dataset="mnist", epochs=5, secs=None, device="cpu", tag=None,
        train_size=None):
    """A record as ``task_runs.run`` writes it (the fields the study reads)."""
    secs = secs or [0.01 * size] * epochs
    tag = study.size_tag(size, epochs) if tag is None else tag
    return {"task": "classify", "dataset": dataset, "encoder": f"{label_base}+{tag}" if tag else label_base,
            "base_encoder": label_base.split("+")[0], "seed": seed, "metrics": {"accuracy": acc},
            "epochs": len(secs), "sec_per_epoch": sum(secs) / len(secs), "total_sec": sum(secs) + 3.0,
            "history": [{"epoch": i + 1, "sec": s} for i, s in enumerate(secs)], "params": 1234,
            "train_size": size if train_size is None else train_size, "val_size": 500, "test_size": 2000,
            "device": device, "torch_threads": 1, "data": {"zoo": "/d/weight_space/inr-mnist-10000-1000-2000-s0-x.pt"},
            "config": {"batch_size": 64, "lr": 0.003, "hidden": 32, "depth": 2, "probes": 128, "tag": tag,
                       "epochs": epochs}}


# ------------------------------------------------------------------------------------------------ labels
def test_labels_and_record_names_differ_per_size():
    from tasks.weight_space.task_runs import default_spec, record_path

    specs = [spec for *_, spec in study.plan("mnist", ("dng", "ng-gnn"), (2500, 500, 1000, 500), (0, 1))]
    assert [s.train_size for s in specs[::4]] == [500, 1000, 2500]  # sizes ascending, duplicates dropped, outermost
    assert len({record_path("out", s) for s in specs}) == len(specs) == 3 * 2 * 2
    one = study.run_spec("mnist", "dng", 1000, 0)
    assert one.label == "dng+probe128+n1000" and one.name == "classify-mnist-dng+probe128+n1000-s0"
    assert one.train_size == 1000 and one.epochs == 5 and one.val_size == 500 and one.test_size is None
    assert study.run_spec("mnist", "ng-gnn", 500, 0).label == "ng-gnn+probe128+n500"
    # Other epochs get their own records; the task's default epochs give the plain size tag.
    assert study.run_spec("mnist", "dng", 1000, 0, {"epochs": 10}).label == "dng+probe128+n1000-e10"
    assert study.run_spec("mnist", "dng", 1000, 0, {"epochs": 5}).label == "dng+probe128+n1000"
    # A larger encoder is another model, with its own records and row; the default size is not named.
    big = study.run_spec("mnist", "dng", 1000, 0, {"hidden": 64, "depth": 4})
    assert (big.hidden, big.depth, big.label) == (64, 4, "dng+h64d4+probe128+n1000")
    assert study.run_spec("mnist", "dng", 1000, 0, {"hidden": 32, "depth": 2}).label == "dng+probe128+n1000"
    # The main runs' labels do not change: the tag only exists in the study's specs.
    assert default_spec("classify", "mnist", "dng", 0).label == "dng+probe128"
    with pytest.raises(ValueError):
        study.size_tag(0)


def test_regularisation_and_the_full_test_set_are_named():
    """Head dropout, a non-default weight decay and the full zoo's test split each make another model or test set:
    another label, record and table row; the defaults are not named."""
    from tasks.weight_space.task_runs import default_spec

    spec = study.run_spec("mnist", "dng", 1000, 0, {"dropout": 0.2, "weight_decay": 1e-2})
    assert (spec.dropout, spec.weight_decay, spec.label) == (0.2, 1e-2, "dng+probe128+do0.2+wd0.01+n1000")
    assert study.run_spec("mnist", "dng", 1000, 0, {"dropout": 0.0, "weight_decay": 1e-4}).label == "dng+probe128+n1000"
    # INR2JLS-style reconstruction (--aux-recon): another model, named; None (the flag not given) is the default.
    jls = study.run_spec("mnist", "dng", 1000, 0, {"aux_recon": 1.0})
    assert (jls.aux_recon, jls.label) == (1.0, "dng+probe128+recon+n1000")
    assert study.run_spec("mnist", "dng", 1000, 0, {"aux_recon": None}).label == "dng+probe128+n1000"
    with pytest.raises(SystemExit):
        study.main(["--aux-recon", "-1", "--sizes", "500"])
    # INR2JLS's alignment weight: named when not 1; refused without --jls (before any data is loaded)
    align = study.run_spec("mnist", "dng", 1000, 0, {"jls": True, "jls_align": 4.0})
    assert (align.jls_align, align.label) == (4.0, "dng+probe128+jls+align4+n1000")
    assert study.run_spec("mnist", "dng", 1000, 0, {"jls": True, "jls_align": 1.0}).label == "dng+probe128+jls+n1000"
    with pytest.raises(SystemExit):
        study.main(["plan", "--jls-align", "4", "--sizes", "500"])
    for bad in ({"dropout": 1.0}, {"dropout": -0.1}, {"weight_decay": -1.0}):
        with pytest.raises(ValueError, match="dropout|weight_decay"):
            default_spec("classify", "mnist", "dng", 0, **bad)
    assert study.full_zoo_sizes("mnist") == {"n_train": 50000, "n_val": 10000, "n_test": 10000}
    assert study.full_zoo_sizes("cifar10") == {"n_train": 45000, "n_val": 5000, "n_test": 10000}
    full = [spec for *_, spec in study.plan("mnist", ("dng",), (500, 50000), (0,), {"epochs": 10}, full=True)]
    assert [s.tag for s in full] == ["n500-e10-t10000", "n50000-e10-t10000"]
    # --test-size caps the full zoo's test split, and the tag names what is tested
    capped = study.plan("cifar10", ("dng",), (10000,), (0,), {"test_size": 2000}, full=True)[0][3]
    assert (capped.tag, capped.test_size) == ("n10000-t2000", 2000)
    assert study.zoo_sizes("mnist", (500,), full=True)["n_test"] == 10000
    assert study.zoo_sizes("mnist", (500, 20000)) == {**study.zoo_defaults(), "n_train": 20000}
    # The full test set is another row than the first 2,000 test INRs of the same model.
    r2k, r10k = rec("dng+probe128", 500, 0, 0.9), rec("dng+probe128", 500, 0, 0.9, tag="n500-t10000")
    assert study._parse(r2k) == ("dng+probe128", 500, 5)
    assert study._parse(r10k) == ("dng+probe128+test10000", 500, 5)


# ------------------------------------------------------------------------------------------------ table / figure
def test_table_from_hand_made_records():
    records = [rec("ng-gnn+probe128", 2500, 0, 0.80), rec("ng-gnn+probe128", 2500, 1, 0.82),
               rec("dng+probe128", 10000, 0, 0.88), rec("dng+probe128", 500, 1, 0.52),
               rec("dng+probe128", 500, 0, 0.50),
               rec("dng+probe128", 500, 0, 0.11),  # a duplicate seed: ignored
               rec("ng-gnn+probe128", 500, 0, 0.55),
               rec("dng+probe128", 2500, 0, 0.70, secs=[6.0, 7.0]),  # epochs done != 5 but tagged for 5: kept
               rec("dng+probe128", 1000, 0, 0.90, epochs=10),  # other epochs: another study
               rec("dng+probe128", 1000, 0, 0.90, dataset="fmnist"),  # another data set
               rec("dng+probe128", 2500, 0, 0.74, tag=""),  # a main-table record: no size tag
               {**rec("dng+probe128", 1000, 0, 0.9), "task": "edit"}]
    table = study.summarize(records, "mnist")
    key = [(r["encoder"], r["size"]) for r in table["rows"]]
    assert key == [("ng-gnn+probe128", 500), ("ng-gnn+probe128", 2500),  # main table's encoder order, sizes ascending
                   ("dng+probe128", 500), ("dng+probe128", 2500), ("dng+probe128", 10000)]
    rows = {k: r for k, r in zip(key, table["rows"])}
    ng = rows[("ng-gnn+probe128", 2500)]
    assert ng["seeds"] == [0, 1] and ng["accuracy_mean"] == pytest.approx(0.81)
    assert ng["accuracy_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))  # sample std
    small = rows[("dng+probe128", 500)]
    assert small["seeds"] == [0, 1] and small["accuracy_mean"] == pytest.approx(0.51)
    assert rows[("dng+probe128", 10000)]["accuracy_std"] == 0.0
    assert rows[("dng+probe128", 2500)]["train_sec_per_run"] == pytest.approx(13.0)
    assert rows[("dng+probe128", 500)]["train_sec_per_run"] == pytest.approx(25.0)  # 5 epochs x 5 s
    # Trend: least squares on log2(size): DNG 0.51 / 0.70 / 0.88 at 500 / 2500 / 10000.
    xs, ys = [math.log2(500), math.log2(2500), math.log2(10000)], [0.51, 0.70, 0.88]
    mx, my = sum(xs) / 3, sum(ys) / 3
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert table["trends"]["dng+probe128"]["points_per_doubling"] == pytest.approx(100 * slope)
    gaps = table["trends"]["dng+probe128"]["gap_to_published"]
    assert [g["published"] for g in gaps] == [96.6] and gaps[0]["gap_points"] == pytest.approx(88.0 - 96.6)
    assert {p["value"] for p in table["published"]} == {96.6, 79.6, 83.4, 97.0}
    assert "500 val / 2000 test INRs" in table["note"] and "7 runs" in table["note"]  # a duplicate seed dropped
    md = study.markdown(table, "inr_scaling_mnist.png")
    assert "| DNG (128 probes) | `dng+probe128+n500` | 500 | 51.00 ± 1.41 | 2 (0, 1) | 25 |" in md
    assert md.index("`dng+probe128+n500`") < md.index("`dng+probe128+n2500`") < md.index("`dng+probe128+n10000`")
    assert "![test accuracy against training INRs](inr_scaling_mnist.png)" in md
    assert "96.6 %" in md and "-8.60 points from DNG, DNG paper" in md
    # The other epoch setting and the other data set are tables of their own.
    assert [r["size"] for r in study.summarize(records, "mnist", epochs=10)["rows"]] == [1000]
    fm = study.summarize(records, "fmnist")
    assert len(fm["rows"]) == 1 and [p["value"] for p in fm["published"]] == [78.4, 71.1, 72.1, 80.0]


def test_a_capped_training_set_shows_in_the_table():
    table = study.summarize([rec("dng+probe128", 20000, 0, 0.9, train_size=10000)], "mnist")
    assert table["rows"][0]["train_sizes"] == [10000]
    assert "20,000 (trained on 10,000)" in study.markdown(table)


def test_outputs_written(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    records = [rec("dng+probe128", s, seed, 0.5 + 0.1 * i + 0.01 * seed) for i, s in enumerate((500, 1000, 2500))
               for seed in (0, 1)] + [rec("ng-gnn+probe128", 500, 0, 0.6), rec("ng-gnn+probe128", 1000, 0, 0.7)]
    for r in records:
        (runs / f"classify-mnist-{r['encoder']}-s{r['seed']}.json").write_text(json.dumps(r))
    table = study.write_outputs(runs, tmp_path / "res", "mnist")
    png = tmp_path / "res" / "inr_scaling_mnist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = json.loads((tmp_path / "res" / "inr_scaling_mnist.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert saved["figure"] == "inr_scaling_mnist.png" and len(saved["rows"]) == 5
    assert [r["size"] for r in saved["rows"] if r["encoder"] == "dng+probe128"] == [500, 1000, 2500]
    assert saved["rows"][0]["records"] == ["classify-mnist-ng-gnn+probe128+n500-s0.json"]
    assert (tmp_path / "res" / "inr_scaling_mnist.md").read_text() == study.markdown(table, "inr_scaling_mnist.png")
    # No records yet: empty outputs, still a figure (the reference lines).
    empty = study.write_outputs(tmp_path / "none", tmp_path / "res2", "fmnist")
    assert empty["rows"] == [] and (tmp_path / "res2" / "inr_scaling_fmnist.png").is_file()
    assert "No records yet" in (tmp_path / "res2" / "inr_scaling_fmnist.md").read_text()


def test_rows_of_an_earlier_table_are_kept_when_their_records_are_gone(tmp_path):
    runs, res = tmp_path / "runs", tmp_path / "res"
    runs.mkdir()
    for r in [rec("dng+probe128", 500, 0, 0.5), rec("dng+probe128", 1000, 0, 0.6)]:
        (runs / f"classify-mnist-{r['encoder']}-n{r['train_size']}.json").write_text(json.dumps(r))
    study.write_outputs(runs, res, "mnist")
    for f in runs.iterdir():  # a later session: the runs folder is gone, one new size and one rerun size
        f.unlink()
    for r in [rec("dng+probe128", 1000, 0, 0.65), rec("dng+probe128", 20000, 0, 0.9)]:
        (runs / f"classify-mnist-{r['encoder']}-n{r['train_size']}.json").write_text(json.dumps(r))
    table = study.write_outputs(runs, res, "mnist")
    rows = [(r["size"], r["accuracy_mean"], r.get("carried", False)) for r in table["rows"]]
    assert rows == [(500, 0.5, True), (1000, 0.65, False), (20000, 0.9, False)]  # a new record replaces its row
    md = (res / "inr_scaling_mnist.md").read_text()
    assert "| 1 (0) * |" in md and "kept from the previous table" in md
    assert table["trends"]["dng+probe128"]["largest_size"] == 20000
    assert [r["size"] for r in study.write_outputs(runs, res, "mnist", carry=False)["rows"]] == [1000, 20000]
    assert [r["size"] for r in study.write_outputs(runs, res, "mnist", epochs=10)["rows"]] == []  # other epochs
    assert (res / "inr_scaling_mnist_e10.md").is_file()  # in files of their own: the 5-epoch table stays
    assert "`dng+probe128+n20000`" in (res / "inr_scaling_mnist.md").read_text()


# ------------------------------------------------------------------------------------------------ estimates
def test_time_estimates():
    spec = study.run_spec("mnist", "dng", 1000, 0)
    sec, source = study.estimate_seconds(spec)
    ms = study.CPU_MS_PER_INR_EPOCH["dng"]
    assert sec == pytest.approx((ms * 1000 * 5 + study.EVAL_FRACTION * ms * (500 * 5 + 2000)) / 1000)
    assert "main table" in source
    # The study's own records of the encoder win: here 2 ms per INR-epoch, 1 ms per evaluated INR.
    r = rec("dng+probe128", 2500, 0, 0.7, secs=[5.0] * 5)
    r["total_sec"] = 25.0 + 0.001 * (500 * 5 + 2000)
    calib = study.calibration([r, rec("dng+probe128", 500, 0, 0.5, secs=[9.0] * 5)])
    sec, source = study.estimate_seconds(spec, calib)
    assert sec == pytest.approx(2e-3 * 1000 * 5 + 1e-3 * (500 * 5 + 2000)) and "2500 INRs" in source
    assert study.estimate_seconds(spec, {}, "cuda")[0] is None  # no GPU timing known yet
    assert study.calibration([r], "cuda") == {}


# ------------------------------------------------------------------------------------------------ zoo beyond the cache
def test_sizes_beyond_the_cached_zoo_get_their_own_data(tmp_path, monkeypatch):
    """A size above the default zoo's training INRs is trained on a zoo fitted with that many (never the capped
    default), handed to ``run_many`` through its data cache under the key it looks up."""
    from meta_train.pipelines import weight_space as ws
    from tasks.weight_space import inr_zoo
    from tasks.weight_space.synthetic import synthetic_inr_zoo

    default_n = study.zoo_defaults()["n_train"]
    assert study.big_zoo_train_size([500, default_n]) is None
    assert study.big_zoo_train_size([500, default_n + 1, default_n + 5]) == default_n + 5
    assert study.max_train_size("mnist") == study.max_train_size("fmnist") == 50000
    monkeypatch.setattr(study, "zoo_defaults", lambda: {"n_train": 4, "n_val": 6, "n_test": 6})
    zoo = synthetic_inr_zoo(n_train=12, n_val=6, n_test=6, hidden=(4, 4), side=4)
    built = []
    monkeypatch.setattr(inr_zoo, "build_inr_zoo", lambda dataset, root, n_train, **kw: built.append(n_train) or "z")
    monkeypatch.setattr(inr_zoo.InrZoo, "load", classmethod(lambda cls, path: zoo))
    monkeypatch.setattr(study, "_zoo_note", lambda *a: None)
    from tasks.weight_space.task_runs import inr_task_data

    small = synthetic_inr_zoo(n_train=4, n_val=6, n_test=6, hidden=(4, 4), side=4)

    def default_data(spec, root, device):  # what run_many loads itself: the default (here 4-INR) zoo
        data = inr_task_data(small, spec.task, spec.train_size, spec.val_size, spec.test_size)
        data.info["which"] = "default"
        return data

    monkeypatch.setattr(ws, "load_task_data", default_data)
    seen = []

    def fake_run(spec, data, out_dir, **kw):
        seen.append((spec.train_size, len(data.train), len(data.val), data.info.get("which", "big")))
        r = rec(spec.label[: -len(spec.tag) - 1], spec.train_size, spec.seed, 0.5, train_size=len(data.train))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{spec.name}.json").write_text(json.dumps(r))
        return r

    monkeypatch.setattr(ws, "run", fake_run)
    paths = study.run_study("mnist", ("dng",), (12, 3, 8), (0,), tmp_path / "out", progress=False,
                            budget={"val_size": 5})
    assert built == [12]  # one zoo, for the largest size, fitted once
    assert seen == [(3, 3, 5, "default"), (8, 8, 5, "big"), (12, 12, 5, "big")]
    assert [p.name for p in paths] == [f"classify-mnist-dng+probe128+n{n}-s0.json" for n in (3, 8, 12)]
    # Resumable: nothing runs again, nothing is fitted.
    study.run_study("mnist", ("dng",), (3, 8, 12), (0,), tmp_path / "out", progress=False, budget={"val_size": 5})
    assert len(seen) == 3 and built == [12]
    # The full zoo: every size from it, and the runs named by its test split, so the records of the default zoo's
    # test INRs above are not taken for them (run_many makes each spec again from the overrides it is given).
    monkeypatch.setattr(study, "full_zoo_sizes", lambda dataset: {"n_train": 12, "n_val": 6, "n_test": 6})
    built.clear()
    paths = study.run_study("mnist", ("dng",), (3, 12), (0,), tmp_path / "out", progress=False,
                            budget={"val_size": 5}, full=True)
    assert built == [12] and seen[3:] == [(3, 3, 5, "big"), (12, 12, 5, "big")]
    assert [p.name for p in paths] == [f"classify-mnist-dng+probe128+n{n}-t6-s0.json" for n in (3, 12)]


# ------------------------------------------------------------------------------------------------ command line
def test_command_line(monkeypatch, tmp_path, capsys):
    args = study.build_parser().parse_args([])
    assert (args.stage, args.dataset, args.encoders, args.sizes, args.seeds, args.epochs, args.device) == (
        "run", "mnist", ["dng", "ng-gnn"], [500, 1000, 2500, 5000, 10000], [0], None, "cpu")
    assert args.out == Path("runs/inr-scaling") and args.results.parts[-2:] == ("results", "weight_space")
    args = study.build_parser().parse_args(["report", "--dataset", "fmnist", "--encoders", "ng-t", "--sizes", "32",
                                            "64", "--epochs", "2", "--device", "cuda"])
    assert (args.stage, args.dataset, args.encoders, args.sizes, args.epochs) == ("report", "fmnist", ["ng-t"],
                                                                                   [32, 64], 2)
    for bad in (["--sizes", "0"], ["--dataset", "svhn"], ["--encoders", "gcn"], ["--epochs", "-1"],
                ["--hidden", "0"]):
        with pytest.raises(SystemExit) as info:
            study.build_parser().parse_args(bad)
        assert info.value.code == 2
    with pytest.raises(SystemExit) as info:  # more INRs than the data set has training images
        study.main(["plan", "--sizes", "60000", "--out", str(tmp_path / "r")])
    assert info.value.code == 2 and "at most 50,000" in capsys.readouterr().err
    # report: no training (and no device check), only the outputs.
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("report must not train"))
    study.main(["report", "--out", str(tmp_path / "r"), "--results", str(tmp_path / "res"), "--device", "tpu"])
    assert (tmp_path / "res" / "inr_scaling_mnist.png").is_file()
    # plan: the runs and their estimates, nothing trained.
    study.main(["plan", "--out", str(tmp_path / "r"), "--sizes", "32", "64", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "4 runs (2 sizes x 1 seed x 2 encoders), 1 epoch at every size" in out
    assert "[1/4] n=32 seed 0 dng: dng+probe128+n32-e1" in out and "[4/4] n=64 seed 0 ng-gnn" in out
    study.main(["plan", "--out", str(tmp_path / "r"), "--sizes", "32", "--encoders", "dng", "--hidden", "64",
                "--depth", "4"])
    assert "dng+h64d4+probe128+n32" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_exits_with_status_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("started work"))
    with pytest.raises(SystemExit) as info:
        study.main(["--device", "cuda", "--out", str(tmp_path / "r"), "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "no usable CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "res").exists()
