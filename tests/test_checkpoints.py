"""Specification of the best-model saver and the training checkpoint (scripts/training/checkpoints.py)."""

import json

import pytest
import torch
from ignite.engine import Engine, Events

from scripts.training.checkpoints import BestModelSaver, TrainingCheckpoint
from scripts.utils.distributed import unwrap


def test_best_model_is_saved_as_a_plain_state_dict_only_when_the_score_improves(tmp_path):
    network = torch.nn.Linear(2, 1)
    engine = Engine(lambda engine, batch: None)
    saver = BestModelSaver(network, tmp_path / "model.pt")
    engine.state.key_metric_name = "val_competition_dice"
    scores = [0.3, 0.5, 0.4]
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_competition_dice=scores[e.state.epoch - 1]))
    saver.attach(engine)
    saved = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append(json.loads((tmp_path / "model.json").read_text())["epoch"]))
    engine.run([0], max_epochs=3)
    assert saved == [1, 2, 2]
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(weights) == {"weight", "bias"}
    assert json.loads((tmp_path / "model.json").read_text())["score"] == 0.5


def test_resumed_saver_does_not_replace_a_better_model(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"metric": "m", "score": 0.9, "epoch": 4}))
    saver = BestModelSaver(torch.nn.Linear(2, 1), tmp_path / "model.pt", metric_name="m", resume=True)
    engine = Engine(lambda engine, batch: None)
    engine.state.metrics["m"] = 0.7
    saver(engine)
    assert not (tmp_path / "model.pt").exists()


def test_unknown_metric_is_a_clear_error(tmp_path):
    engine = Engine(lambda engine, batch: None)
    with pytest.raises(KeyError, match="nope"):
        BestModelSaver(torch.nn.Linear(2, 1), tmp_path / "model.pt", metric_name="nope")(engine)


def test_unwrap_removes_data_parallel_wrappers():
    inner = torch.nn.Linear(2, 1)
    assert unwrap(torch.nn.DataParallel(inner)) is inner


def test_checkpoint_round_trips_network_optimizer_and_trainer_position(tmp_path):
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def step(engine, batch):
        optimizer.zero_grad()
        network(torch.ones(1, 2)).sum().backward()
        optimizer.step()

    trainer = Engine(step)
    TrainingCheckpoint(tmp_path, {"network": network, "optimizer": optimizer}).attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    trained = {k: v.clone() for k, v in network.state_dict().items()}

    fresh = torch.nn.Linear(2, 1)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    resumed = Engine(lambda engine, batch: None)
    TrainingCheckpoint(tmp_path, {"network": fresh, "optimizer": fresh_optimizer}, resume=True).attach(resumed)
    resumed.run([0, 1], max_epochs=3)
    assert resumed.state.epoch == 3 and resumed.state.iteration == 6  # continued after epoch 2, iteration 4
    for name, value in trained.items():
        torch.testing.assert_close(fresh.state_dict()[name], value)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        TrainingCheckpoint(tmp_path, {}, resume=True)


@pytest.mark.parametrize("spelling", ["false", "False", "no", "0", False])
def test_resume_false_from_the_command_line_starts_a_fresh_run(tmp_path, spelling):
    """``--resume false`` arrives as the string "false": it must not ask for a checkpoint that a fresh run lacks."""
    checkpoint = TrainingCheckpoint(tmp_path, {"network": torch.nn.Linear(2, 1)}, resume=spelling)
    assert checkpoint.resume is False
    engine = Engine(lambda engine, batch: None)
    checkpoint.attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 1


def test_resume_true_as_a_string_still_needs_the_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        TrainingCheckpoint(tmp_path, {"network": torch.nn.Linear(2, 1)}, resume="true")
    with pytest.raises(ValueError, match="resume must be true or false"):
        TrainingCheckpoint(tmp_path, {"network": torch.nn.Linear(2, 1)}, resume="maybe")


class CountingValidator:
    def __init__(self):
        self.epochs = []

    def run(self, epoch):
        self.epochs.append(epoch)


@pytest.mark.parametrize("max_epochs,interval,expected", [(2, 3, [2]), (6, 3, []), (7, 3, [7]), (1, 1, [])])
def test_the_last_epoch_is_always_validated_once(max_epochs, interval, expected):
    from scripts.training.validation import ValidateLastEpoch

    validator = CountingValidator()
    engine = Engine(lambda engine, batch: None)
    ValidateLastEpoch(validator, interval).attach(engine)
    engine.run([0], max_epochs=max_epochs)
    assert validator.epochs == expected  # ValidationHandler(interval) covers the epochs divisible by interval


def test_val_interval_below_one_is_refused():
    from scripts.training.validation import ValidateLastEpoch

    with pytest.raises(ValueError, match="val_interval must be"):
        ValidateLastEpoch(CountingValidator(), 0)


def test_a_finished_run_says_where_its_model_is_or_fails(tmp_path, caplog):
    from scripts.training.checkpoints import ReportSavedModel

    engine = Engine(lambda engine, batch: None)
    ReportSavedModel(tmp_path / "model.pt").attach(engine)
    with pytest.raises(RuntimeError, match=r"training finished after epoch 1 but saved no model at .*model\.pt"):
        engine.run([0], max_epochs=1)
    torch.save({}, tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({"metric": "val_competition_dice", "score": 0.8, "epoch": 1}))
    engine = Engine(lambda engine, batch: None)
    ReportSavedModel(tmp_path / "model.pt").attach(engine)
    with caplog.at_level("INFO", logger="scripts.training.checkpoints"):
        engine.run([0], max_epochs=1)
    assert f"model: {tmp_path / 'model.pt'} (val_competition_dice 0.8000 at epoch 1" in caplog.text
