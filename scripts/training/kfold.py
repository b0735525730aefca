"""K-fold cross-validation: train folds 0..K-1 of one config in sequence, and leave them as an ensemble.

    python -m scripts.training.kfold --folds 5 --config_file "['configs/common.json','configs/train.json']" \\
        --dataset_dir /data/siim [--evaluate] [--weight_by_score] [any other bundle override]

Fold ``k`` is ``python -m monai.bundle run ... --fold k --n_folds K`` with its weights in ``<ckpt_dir>/fold<k>/``
and its logs and training state in ``<output_dir>/fold<k>/`` (default ``<ckpt_dir>/runs``). After a crash, a kill
or Ctrl-C (which stop the fold's run too, as a SIGKILL of this command does), the same command goes on where it stopped: a fold that finished
(``fold<k>/fold.json``) is skipped, one whose training finished but not its evaluation is only evaluated, and one
that was stopped resumes from its training state (``--resume true``). Each fold records the settings it was started
with (``fold<k>/run.json``: K, the configs, every override, the output folder); a later command with other settings
is refused, naming the folder, rather than mixing two runs in one fold. ``--evaluate`` also runs
``configs/evaluate.json`` on each fold (its own thresholds and scores in ``fold<k>/``).

At the end ``<ckpt_dir>/ensemble.json`` is an override for ``inference.json`` naming the K checkpoints (relative to
``ckpt_dir``, so the folder can move), weighted by validation score with ``--weight_by_score``, equal otherwise,
with thresholds from ``<ckpt_dir>/ensemble_thresholds.json`` when one is there (else ``triplet``)::

    python -m monai.bundle run --config_file "['configs/common.json','configs/inference.json','models/ensemble.json']" \\
        --ckpt_dir models --dataset_dir /data/dicoms
"""

from __future__ import annotations

import argparse
import ast
import json
import signal
import subprocess
import sys
from pathlib import Path

from scripts.networks.definition import saved_record
from scripts.siim.datalist import read_datalist
from scripts.training.checkpoints import write_ensemble_override
from scripts.utils.files import write_json
from scripts.utils.metadata import BUNDLE_ROOT
from scripts.utils.processes import ends_with_this_process

__all__ = ["ENSEMBLE_FILE", "FOLD_FILE", "RUN_FILE", "main"]

#: What a fold leaves in its folder when its training (and, with ``--evaluate``, its evaluation) finished.
FOLD_FILE = "fold.json"
#: The settings a fold was started with.
RUN_FILE = "run.json"
#: The inference override the command writes into ``ckpt_dir``.
ENSEMBLE_FILE = "ensemble.json"
_OWN = ("fold", "n_folds", "resume", "ckpt_dir", "output_dir")


class _Refused(Exception):
    """A reason the command cannot go on, for the user."""


def _option(argument: str) -> str | None:
    """``--n-folds=3`` -> ``n_folds``: an option's name as MONAI's command line reads it (Fire: - is _)."""
    if not argument.startswith("--"):
        return None
    return argument[2:].split("=", 1)[0].replace("-", "_")


def _value(passed: list[str], name: str) -> str | None:
    """The value of option ``name`` among the passed-on arguments (the last one, as MONAI takes it)."""
    found = None
    for index, argument in enumerate(passed):
        if _option(argument) == name:
            found = argument.split("=", 1)[1] if "=" in argument else (passed[index + 1] if index + 1 < len(passed) else None)
    return found


def _config_files(value: str) -> list[str]:
    """``--config_file`` as a list (MONAI takes a path, paths joined by commas, or a list written as a string)."""
    text = value.strip()
    if text.startswith("["):
        try:
            files = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise _Refused(f"--config_file {value}: not a list of paths") from None
        return [str(name) for name in files]
    return [name.strip() for name in text.split(",")] if "," in text and not Path(text).is_file() else [text]


def _check_datalist(path: str, folds: int) -> None:
    """A datalist file must hold ``folds`` folds: K runs of one fixed split would be one model K times."""
    content = read_datalist(path)
    if "items" in content:
        made = content.get("n_folds")
        if made is not None and int(made) != folds:
            raise _Refused(f"--datalist_file {path} holds {made} folds, not --folds {folds}")
        return
    if "validation" in content:
        raise _Refused(f"--datalist_file {path} has one fixed validation list, no folds to cross-validate")
    found = {item.get("fold") for item in content.get("training", [])}
    if found != set(range(folds)):
        raise _Refused(f"--datalist_file {path} has folds {sorted(found, key=str)}, not 0..{folds - 1} (--folds {folds})")


def _bundle_run(config_files: list[str], args: list[str]) -> int:
    """``monai.bundle run`` as a child process that a SIGTERM or Ctrl-C of this command also stops; its exit code
    (128 + the signal's number when a signal ended it)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(config_files), *args]
    child = subprocess.Popen(command, preexec_fn=ends_with_this_process())  # SIGKILL of this command ends it too

    def forward(number, _frame) -> None:
        child.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return code if code >= 0 else 128 - code


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _record(model: Path) -> dict:
    saved = saved_record(model)
    return {key: saved[key] for key in ("metric", "score", "epoch") if key in saved}


def _run_fold(fold: int, args, config_files: list[str], passed: list[str], settings: dict) -> dict:
    """Train (or resume, or skip) fold ``fold`` and, with ``--evaluate``, evaluate it; its ``fold.json``."""
    folder, logs = Path(args.ckpt_dir) / f"fold{fold}", Path(settings["output_dir"]) / f"fold{fold}"
    name = f"fold {fold}/{args.folds}"
    started = _read(folder / RUN_FILE)
    if started and started != settings:
        raise _Refused(
            f"{folder}: fold {fold} was started with other settings ({folder / RUN_FILE}); rerun with those, "
            "or use another --ckpt_dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RUN_FILE, settings)
    status = _read(folder / FOLD_FILE)
    common = [*passed, "--fold", str(fold), "--n_folds", str(args.folds), "--ckpt_dir", str(folder)]
    if not status.get("trained"):
        state = logs / "checkpoint.pt"  # the training state, beside the run's logs
        resume = state.is_file()
        print(f"{name}: {'resuming from ' + str(state) if resume else 'training'}", file=sys.stderr)
        code = _bundle_run(config_files, [*common, "--output_dir", str(logs), "--resume", "true" if resume else "false"])
        if code != 0:
            raise _Refused(f"{name} stopped (exit {code}); the same command resumes it", code)
        status = {"fold": fold, "n_folds": args.folds, "trained": True, "evaluated": False, **_record(folder / "model.pt")}
        write_json(folder / FOLD_FILE, status)
    elif not (args.evaluate and not status.get("evaluated")):
        print(f"{name}: finished earlier ({status.get('metric')} {status.get('score')}), skipped", file=sys.stderr)
    if args.evaluate and not status.get("evaluated"):
        print(f"{name}: evaluating", file=sys.stderr)
        evaluate = [*config_files, str(BUNDLE_ROOT / "configs" / "evaluate.json")]
        code = _bundle_run(evaluate, [*common, "--output_dir", str(logs / "eval")])
        if code != 0:
            raise _Refused(f"{name}: evaluation stopped (exit {code}); the same command evaluates it again", code)
        status = {**status, "evaluated": True}
        write_json(folder / FOLD_FILE, status)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Other arguments go to every fold's monai.bundle run.",
    )  # fmt: skip
    parser.add_argument("--folds", type=int, required=True, help="K: folds 0..K-1 (--n_folds of each run)")
    parser.add_argument("--config_file", required=True, help="the training configs, as monai.bundle takes them")
    parser.add_argument("--ckpt_dir", default="models", help="folder of fold<k>/ and ensemble.json (default models)")
    parser.add_argument("--output_dir", default=None, help="folder of each fold's logs (default <ckpt_dir>/runs)")
    parser.add_argument("--evaluate", action="store_true", help="also run configs/evaluate.json on each fold")
    parser.add_argument("--weight_by_score", action="store_true", help="weight the ensemble by validation score")
    args, passed = parser.parse_known_args(argv)
    own = [argument for argument in passed if _option(argument) in _OWN]
    if own:
        parser.error(f"{', '.join(own)}: set by the K-fold command for each fold (its own --ckpt_dir / --output_dir)")
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: K-fold needs at least 2 folds")
    try:
        config_files = _config_files(args.config_file)
        datalist = _value(passed, "datalist_file")
        if datalist:
            _check_datalist(datalist, args.folds)
        output_dir = args.output_dir or str(Path(args.ckpt_dir) / "runs")
        settings = {"folds": args.folds, "config_file": config_files, "arguments": passed, "output_dir": output_dir}
        folds = [_run_fold(fold, args, config_files, passed, settings) for fold in range(args.folds)]
    except _Refused as refused:
        print(f"error: {refused.args[0]}", file=sys.stderr)
        return refused.args[1] if len(refused.args) > 1 else 2
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    ckpt_dir = Path(args.ckpt_dir)
    weights = [float(fold["score"]) for fold in folds] if args.weight_by_score else None
    checkpoints = [ckpt_dir / f"fold{fold}" / "model.pt" for fold in range(args.folds)]
    write_ensemble_override(ckpt_dir / ENSEMBLE_FILE, checkpoints, ckpt_dir, weights=weights, kfold_folds=folds)
    scores = ", ".join(f"{fold.get('score', float('nan')):.4f}" for fold in folds)
    print(f"{args.folds} folds trained ({scores}); ensemble: {ckpt_dir / ENSEMBLE_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
