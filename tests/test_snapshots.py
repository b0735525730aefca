"""Specification of snapshot ensembles (scripts/training/snapshots.py): warm restarts, cycle snapshots, best K."""

import json

import pytest
import torch
from ignite.engine import Engine, Events
from monai.optimizers import WarmupCosineSchedule

from scripts.training.snapshots import BestCheckpoints, CycleSnapshots, WarmRestartsSchedule


def _rates(schedule_type, steps, **arguments):
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = schedule_type(optimizer, **arguments)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_one_cycle_is_monais_warmup_cosine_schedule_the_default_until_now():
    ours = _rates(WarmRestartsSchedule, 40, warmup_steps=5, t_total=40, cycles=1)
    monai = _rates(WarmupCosineSchedule, 40, warmup_steps=5, t_total=40)
    assert ours == pytest.approx(monai, abs=1e-12)


def test_each_cycle_restarts_at_the_peak_and_ends_near_zero_and_only_the_first_warms_up():
    rates = _rates(WarmRestartsSchedule, 30, warmup_steps=4, t_total=30, cycles=3)
    assert rates[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert rates[10] == rates[20] == pytest.approx(1.0)  # restarts, no warm-up
    for last in (9, 19, 29):  # each cycle's last step has its lowest rate
        assert rates[last] < 0.07 and rates[last] == min(rates[last - 5 : last + 1])


def test_a_checkpoint_of_monais_schedule_resumes_as_one_cycle_and_another_number_of_cycles_is_refused():
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    old = WarmupCosineSchedule(optimizer, warmup_steps=2, t_total=20)
    for _ in range(5):
        optimizer.step()
        old.step()
    saved = old.state_dict()
    expected = [old.lr_lambda(step) for step in range(5, 20)]
    schedule = WarmRestartsSchedule(optimizer, warmup_steps=2, t_total=20, cycles=1)
    schedule.load_state_dict(saved)
    assert schedule.last_epoch == 5 and [schedule.lr_lambda(step) for step in range(5, 20)] == pytest.approx(expected)
    with pytest.raises(ValueError, match="has 1 cycles: resume with --snapshot_cycles 1"):
        WarmRestartsSchedule(optimizer, warmup_steps=2, t_total=20, cycles=2).load_state_dict(saved)


def test_impossible_cycles_are_refused_by_name(tmp_path):
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="snapshot_cycles 0"):
        WarmRestartsSchedule(optimizer, warmup_steps=0, t_total=10, cycles=0)
    with pytest.raises(ValueError, match=r"a cycle of 5 steps is no longer than the warm-up \(5 steps"):
        WarmRestartsSchedule(optimizer, warmup_steps=5, t_total=30, cycles=6)
    with pytest.raises(ValueError, match=r"max_epochs \(10\) must be a multiple"):
        CycleSnapshots(torch.nn.Linear(1, 1), tmp_path, cycles=3, max_epochs=10, ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match="keep_best 0"):
        BestCheckpoints(torch.nn.Linear(1, 1), tmp_path, k=0, ckpt_dir=tmp_path)


def _epoch_valued_network():
    network = torch.nn.Linear(2, 1)

    def step(engine, batch):
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.fill_(float(engine.state.epoch))

    return network, Engine(step)


def test_the_weights_at_the_end_of_each_cycle_are_kept_and_named_by_an_ensemble_override(tmp_path):
    network, engine = _epoch_valued_network()
    CycleSnapshots(network, tmp_path / "models" / "snapshots", cycles=3, max_epochs=6, ckpt_dir=tmp_path / "models").attach(engine)
    engine.run([0], max_epochs=6)
    folder = tmp_path / "models" / "snapshots"
    assert sorted(path.name for path in folder.glob("*.pt")) == ["cycle1.pt", "cycle2.pt", "cycle3.pt"]
    for cycle, epoch in ((1, 2), (2, 4), (3, 6)):
        weights = torch.load(folder / f"cycle{cycle}.pt", weights_only=True)
        assert torch.equal(weights["weight"], torch.full((1, 2), float(epoch)))
        assert json.loads((folder / f"cycle{cycle}.json").read_text())["epoch"] == epoch
    override = json.loads((folder / "ensemble.json").read_text())
    assert override["checkpoints"] == [f"$@ckpt_dir + '/snapshots/cycle{k}.pt'" for k in (1, 2, 3)]
    assert override["thresholds_file"] == "$@ckpt_dir + '/snapshots/ensemble_thresholds.json'"


def test_a_new_run_removes_an_earlier_runs_snapshots_and_one_cycle_writes_none(tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    for name in ("cycle1.pt", "cycle1.json", "cycle4.pt", "ensemble.json", "ensemble_thresholds.json", "notes.txt"):
        (folder / name).write_text("an earlier run's")
    network, engine = _epoch_valued_network()
    CycleSnapshots(network, folder, cycles=1, max_epochs=3, ckpt_dir=tmp_path).attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt"]


def test_snapshots_whose_cycles_the_trainer_would_not_run_are_refused_when_it_starts(tmp_path):
    network, engine = _epoch_valued_network()
    CycleSnapshots(network, tmp_path / "snapshots", cycles=3, max_epochs=6, ckpt_dir=tmp_path).attach(engine)
    with pytest.raises(ValueError, match="the trainer runs 4 epochs, the schedule's cycles are of max_epochs 6"):
        engine.run([0], max_epochs=4)  # e.g. MONAI Label sets the trainer's max_epochs alone


def _validated_run(tmp_path, scores, k=2, resume=False, after_epoch=0):
    """Epochs ``after_epoch + 1`` on, validated with ``scores``; the epochs kept."""
    network, engine = _epoch_valued_network()
    engine.state.key_metric_name = "val_competition_dice"
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", after_epoch))  # as a resumed run starts
    score_of = lambda e: scores[e.state.epoch - after_epoch - 1]  # noqa: E731
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_competition_dice=score_of(e)))
    BestCheckpoints(network, tmp_path / "best", k=k, ckpt_dir=tmp_path, resume=resume).attach(engine)
    engine.run([0], max_epochs=after_epoch + len(scores))
    return sorted(int(path.stem[len("epoch") :]) for path in (tmp_path / "best").glob("epoch*.pt"))


def test_the_k_best_epochs_are_kept_best_first_and_the_others_removed(tmp_path):
    assert _validated_run(tmp_path, [0.3, 0.5, 0.4, 0.6, float("nan"), 0.1]) == [2, 4]
    assert not (tmp_path / "best" / "epoch1.json").exists()
    assert torch.equal(torch.load(tmp_path / "best" / "epoch4.pt", weights_only=True)["bias"], torch.tensor([4.0]))
    override = json.loads((tmp_path / "best" / "ensemble.json").read_text())
    assert override["checkpoints"] == ["$@ckpt_dir + '/best/epoch4.pt'", "$@ckpt_dir + '/best/epoch2.pt'"]


def test_a_new_run_starts_the_best_epochs_afresh_and_a_resumed_one_keeps_them(tmp_path):
    def kept_scores():
        return sorted(json.loads(path.read_text())["score"] for path in (tmp_path / "best").glob("epoch*.json"))

    _validated_run(tmp_path, [0.9, 0.8, 0.1])
    assert _validated_run(tmp_path, [0.2, 0.85, 0.1], resume=True, after_epoch=3) == [1, 5]
    assert kept_scores() == [0.85, 0.9]
    assert _validated_run(tmp_path, [0.2, 0.3, 0.1]) == [1, 2]
    assert kept_scores() == [0.2, 0.3]
    assert _validated_run(tmp_path, [0.05], k=3, resume=True, after_epoch=3) == [1, 2, 4]
    assert _validated_run(tmp_path, [0.01], k=2, resume=True, after_epoch=4) == [1, 2]  # a lower keep_best on resuming
    assert _validated_run(tmp_path, [0.1], k=1) == [] and not (tmp_path / "best" / "ensemble.json").exists()


def test_a_bundle_run_keeps_cycle_snapshots_and_best_epochs_that_run_as_ensembles(tiny_siim, tmp_path):
    from tests.conftest import COMMON, TINY, config_files, run_bundle

    models = tmp_path / "models"
    meta = ["--meta_file", "configs/metadata.json", "--ckpt_dir", str(models)]
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", TINY), *meta, "--dataset_dir", str(tiny_siim),
                "--output_dir", str(tmp_path / "train"), "--max_epochs", "4", "--snapshot_cycles", "2", "--keep_best", "2"])  # fmt: skip
    assert sorted(path.name for path in (models / "snapshots").glob("*.pt")) == ["cycle1.pt", "cycle2.pt"]
    assert len(list((models / "best").glob("epoch*.pt"))) == 2
    best = json.loads((models / "best" / "ensemble.json").read_text())["checkpoints"]
    scores = [json.loads((models / path.split("'")[1].lstrip("/")).with_suffix(".json").read_text())["score"] for path in best]
    assert scores == sorted(scores, reverse=True) and scores[0] == json.loads((models / "model.json").read_text())["score"]
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/inference.json", str(models / "snapshots" / "ensemble.json")), *meta,
                "--dataset_dir", str(tiny_siim / "dicom-images-test"), "--output_dir", str(tmp_path / "out"), "--roi_size", "[64,64]"])  # fmt: skip
    assert len((tmp_path / "out" / "submission.csv").read_text().splitlines()) == 3
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", "configs/evaluate.json", TINY, str(models / "best" / "ensemble.json")),
                *meta, "--dataset_dir", str(tiny_siim), "--output_dir", str(tmp_path / "eval")])  # fmt: skip
    assert (models / "best" / "ensemble_thresholds.json").is_file()
    assert 0.0 <= json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["val_competition_dice"] <= 1.0
