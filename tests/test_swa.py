"""Specification of stochastic weight averaging (scripts/training/swa.py)."""

import json

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler

from scripts.training.checkpoints import TrainingCheckpoint
from scripts.training.swa import StochasticWeightAveraging


def _hand_set_run(tmp_path, anneal_epochs, **settings):
    """Four epochs of two iterations in which the 'training step' sets every weight to the epoch's number, while a
    scheduler of the run's own halves the learning rate after every iteration; SWA averages epochs 2-4. Returns
    the rate of each iteration."""
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    own_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    rates = []

    def step(engine, batch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: changes nothing, keeps the schedulers' order of calls
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.fill_(float(engine.state.epoch))

    engine = Engine(step)
    LrScheduleHandler(own_schedule, epoch_level=False, print_lr=False).attach(engine)
    swa = StochasticWeightAveraging(network, optimizer, tmp_path / "model_swa.pt", epochs=3, lr=0.01, anneal_epochs=anneal_epochs, **settings)
    swa.attach(engine)
    engine.run([0, 1], max_epochs=4)
    return rates


def test_the_averaged_weights_are_the_mean_of_the_snapshots_of_the_last_epochs(tmp_path):
    _hand_set_run(tmp_path, anneal_epochs=0)
    averaged = torch.load(tmp_path / "model_swa.pt", weights_only=True)
    assert set(averaged) == {"weight", "bias"}
    for value in averaged.values():
        torch.testing.assert_close(value, torch.full_like(value, (2.0 + 3.0 + 4.0) / 3))
    record = json.loads((tmp_path / "model_swa.json").read_text())
    assert record["swa"] == {"first_epoch": 2, "last_epoch": 4, "snapshots": 3}


def test_swalr_sets_the_rate_of_the_averaged_epochs_over_the_runs_own_schedule(tmp_path):
    assert _hand_set_run(tmp_path, anneal_epochs=0) == pytest.approx([1.0, 0.5] + [0.01] * 6)
    # annealed (cosine) over two epochs from the 0.25 the run's schedule had reached when epoch 2 started: epoch 2
    # keeps 0.25, epoch 3 is half-way, epoch 4 at swa_lr; within each epoch the rate holds
    half_way = 0.5 * 0.25 + 0.5 * 0.01
    assert _hand_set_run(tmp_path, anneal_epochs=2) == pytest.approx([1.0, 0.5, 0.25, 0.25, half_way, half_way, 0.01, 0.01])


def test_a_new_run_removes_an_earlier_runs_average_and_writes_none_when_it_ends_before_averaging(tmp_path):
    (tmp_path / "model_swa.pt").write_bytes(b"an earlier run's")
    (tmp_path / "model_swa.json").write_text("{}")
    network = torch.nn.Linear(3, 2)
    engine = Engine(lambda engine, batch: None)
    swa = StochasticWeightAveraging(network, torch.optim.SGD(network.parameters(), lr=1.0), tmp_path / "model_swa.pt", epochs=2, lr=0.1)
    swa.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())  # e.g. early stopping, before SWA
    engine.run([0], max_epochs=5)
    assert swa.snapshots == 0
    assert not (tmp_path / "model_swa.pt").exists() and not (tmp_path / "model_swa.json").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"epochs": -1}, "swa_epochs -1"), ({"lr": 0.0}, "swa_lr"), ({"anneal_epochs": -1}, "swa_anneal_epochs"),
     ({"bn_batches": 0}, "swa_bn_batches"), ({"schedule_cycles": 3}, "snapshot_cycles 3: both set the rate")],
)  # fmt: skip
def test_impossible_settings_are_refused_by_name(tmp_path, arguments, message):
    network = torch.nn.Linear(3, 2)
    settings = {"epochs": 2, "lr": 0.1, **arguments}
    with pytest.raises(ValueError, match=message):
        StochasticWeightAveraging(network, torch.optim.SGD(network.parameters(), lr=1.0), tmp_path / "m.pt", **settings)


@pytest.mark.parametrize(("settings", "message"), [({"epochs": 5}, "more than the 4 epochs"), ({"epochs": 4, "warmup_epochs": 1}, "more than the 3 epochs")])
def test_averaged_epochs_reaching_into_the_warm_up_are_refused_when_training_starts(tmp_path, settings, message):
    network = torch.nn.Linear(3, 2)
    engine = Engine(lambda engine, batch: None)
    StochasticWeightAveraging(network, torch.optim.SGD(network.parameters(), lr=1.0), tmp_path / "m.pt", lr=0.1, **settings).attach(engine)
    with pytest.raises(ValueError, match=message):
        engine.run([0], max_epochs=4)


class _Stop(Exception):
    """Stands for a kill after a checkpoint was written."""


def _train(tmp_path, resume=False, stop_after=None, prepare_batch=None, swa_lr=0.005):
    """A small conv + batch-norm network trained by MONAI's SupervisedTrainer on dictionary batches, with the run's
    own LR schedule, SWA over epochs 3-5 (annealed over two) and the training checkpoint; returns (trainer, SWA
    handler, batches)."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8)
    generator = torch.Generator().manual_seed(1)
    batches = [
        {"image": torch.rand(2, 1, 8, 8, generator=generator) * (index + 1), "label": torch.rand(2, 1, 8, 8, generator=generator).round()}
        for index in range(2)
    ]
    extra = {} if prepare_batch is None else {"prepare_batch": prepare_batch}
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=5, train_data_loader=batches, network=network, optimizer=optimizer,
        loss_function=torch.nn.BCEWithLogitsLoss(), **extra,
    )  # fmt: skip
    swa = StochasticWeightAveraging(network, optimizer, tmp_path / "model_swa.pt", epochs=3, lr=swa_lr, anneal_epochs=2, resume=resume)
    for handler in (
        LrScheduleHandler(schedule, epoch_level=False, print_lr=False),
        swa,
        TrainingCheckpoint(tmp_path, {"network": network, "optimizer": optimizer, "lr_scheduler": schedule}, resume=resume),  # SWA joins by itself
    ):
        handler.attach(trainer)
    if stop_after is not None:

        def stop(_engine):
            raise _Stop

        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), stop)
    return trainer, swa, batches


def test_a_run_killed_during_the_averaged_epochs_resumes_to_the_same_averaged_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train(whole)[0].run()
    trainer, swa, _ = _train(killed, stop_after=3)
    with pytest.raises(_Stop):
        trainer.run()
    assert swa.snapshots == 1 and not (killed / "model_swa.pt").exists()
    trainer, swa, _ = _train(killed, resume=True)
    trainer.run()
    assert swa.snapshots == 3
    expected, resumed = (torch.load(folder / "model_swa.pt", weights_only=True) for folder in (whole, killed))
    assert set(expected) == set(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-7, msg=name)


def test_resuming_with_other_swa_settings_is_refused_by_name(tmp_path):
    trainer, _, _ = _train(tmp_path, stop_after=3)
    with pytest.raises(_Stop):
        trainer.run()
    trainer, _, _ = _train(tmp_path, resume=True, swa_lr=0.001)
    with pytest.raises(ValueError, match="resume with the run's own swa_"):
        trainer.run()


def test_a_training_checkpoint_without_swa_state_resumes_with_swa(tmp_path):
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    TrainingCheckpoint(tmp_path, {"network": network}).attach(before := Engine(lambda engine, batch: None))
    before.run([0], max_epochs=1)  # a checkpoint of version 0.4, or of a run before its averaged epochs
    swa = StochasticWeightAveraging(network, optimizer, tmp_path / "model_swa.pt", epochs=1, lr=0.1, resume=True)
    resumed = Engine(lambda engine, batch: None)
    swa.attach(resumed)
    TrainingCheckpoint(tmp_path, {"network": network}, resume=True).attach(resumed)
    resumed.run([0], max_epochs=2)
    assert swa.snapshots == 1 and (tmp_path / "model_swa.pt").is_file()


def test_batch_norm_statistics_are_recomputed_on_what_the_trainers_prepare_batch_makes_of_its_batches(tmp_path):
    def doubled(batch, device=None, non_blocking=False, **kwargs):
        return 2 * batch["image"].to(device), batch["label"].to(device)

    trainer, swa, batches = _train(tmp_path, prepare_batch=doubled)
    trainer.run()
    first_norm = swa.averaged.module[0]
    # momentum None during the update: the running mean is the plain mean of the batches' means
    expected = torch.stack([(2 * batch["image"]).mean() for batch in batches]).mean()
    torch.testing.assert_close(first_norm.running_mean, expected.reshape(1))
    saved = torch.load(tmp_path / "model_swa.pt", weights_only=True)
    torch.testing.assert_close(saved["0.running_mean"], expected.reshape(1))
    assert first_norm.momentum == 0.1  # restored after the update


def test_a_bundle_run_with_swa_writes_averaged_weights_that_evaluation_takes_as_a_checkpoint(tiny_siim, tmp_path):
    from scripts.networks.definition import saved_network_config
    from tests.conftest import COMMON, TINY, config_files, run_bundle

    meta = ["--meta_file", "configs/metadata.json", "--dataset_dir", str(tiny_siim), "--ckpt_dir", str(tmp_path / "models")]
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", TINY), *meta,
                "--output_dir", str(tmp_path / "train"), "--max_epochs", "3", "--swa_epochs", "2"])  # fmt: skip
    swa_weights = tmp_path / "models" / "model_swa.pt"
    record = json.loads(swa_weights.with_suffix(".json").read_text())
    assert record["swa"] == {"first_epoch": 2, "last_epoch": 3, "snapshots": 2}
    assert saved_network_config(swa_weights) == saved_network_config(tmp_path / "models" / "model.pt") is not None
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    averaged = torch.load(swa_weights, weights_only=True)
    assert set(averaged) == set(best) and any(not torch.equal(averaged[key], best[key]) for key in best)
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", "configs/evaluate.json", TINY), *meta,
                "--output_dir", str(tmp_path / "eval"), "--checkpoints", f"['{swa_weights}']",
                "--thresholds_file", str(tmp_path / "swa_thresholds.json")])  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["val_competition_dice"] <= 1.0
