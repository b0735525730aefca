"""K-fold cross-validation: train folds 0..K-1 of one config in sequence, and leave them as an ensemble.

    python -m scripts.training.kfold --folds 5 --config_file "['configs/common.json','configs/train.json']" \\
        --dataset_dir /data/siim [--evaluate] [--weight_by_score] [any other bundle override]

Fold ``k`` is ``python -m monai.bundle run ... --fold k --n_folds K`` with its weights in ``<ckpt_dir>/fold<k>/``
and its logs in ``<output_dir>/fold<k>/``. A fold that finished (``fold<k>/fold.json``) is skipped when the command
runs again, and a fold that was stopped resumes from its ``<output_dir>/fold<k>/checkpoint.pt`` (``--resume true``):
after a crash or a kill, the same command goes on where it stopped. ``--evaluate`` also runs ``configs/evaluate.json`` on each fold
(its own thresholds and scores in ``fold<k>/``).

At the end ``<ckpt_dir>/ensemble.json`` is an override for ``inference.json`` naming the K checkpoints (relative to
``ckpt_dir``, so the folder can move), weighted by validation score with ``--weight_by_score``, equal otherwise::

    python -m monai.bundle run --config_file "['configs/common.json','configs/inference.json','models/ensemble.json']" \\
        --ckpt_dir models --dataset_dir /data/dicoms
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

from scripts.utils.files import atomic_open
from scripts.utils.metadata import BUNDLE_ROOT

__all__ = ["ENSEMBLE_FILE", "FOLD_FILE", "main"]

#: What a finished fold leaves in its folder (its presence is what "finished" means).
FOLD_FILE = "fold.json"
#: The inference override the command writes into ``ckpt_dir``.
ENSEMBLE_FILE = "ensemble.json"
_OWN = ("--fold", "--n_folds", "--resume")


def _config_files(value: str) -> list[str]:
    """``--config_file`` as a list (MONAI takes a path or a list written as a string)."""
    text = value.strip()
    if text.startswith("["):
        try:
            files = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--config_file {value}: not a list of paths") from None
        return [str(name) for name in files]
    return [text]


def _bundle_run(config_files: list[str], args: list[str]) -> int:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(config_files), *args]
    return subprocess.run(command).returncode


def _record(model: Path) -> dict:
    record = model.with_suffix(".json")
    if not record.is_file():
        return {}
    saved = json.loads(record.read_text(encoding="utf-8"))
    return {key: saved[key] for key in ("metric", "score", "epoch") if key in saved}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Other arguments go to every fold's monai.bundle run.",
    )
    parser.add_argument("--folds", type=int, required=True, help="K: folds 0..K-1 (--n_folds of each run)")
    parser.add_argument("--config_file", required=True, help="the training configs, as monai.bundle takes them")
    parser.add_argument("--ckpt_dir", default="models", help="folder of fold<k>/ and ensemble.json (default models)")
    parser.add_argument("--output_dir", default="runs/kfold", help="folder of each fold's logs (default runs/kfold)")
    parser.add_argument("--evaluate", action="store_true", help="also run configs/evaluate.json on each fold")
    parser.add_argument("--weight_by_score", action="store_true", help="weight the ensemble by validation score")
    args, passed = parser.parse_known_args(argv)
    own = [name for name in passed if name.split("=")[0] in _OWN]
    if own:
        parser.error(f"{', '.join(own)}: set by the K-fold command for each fold")
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: K-fold needs at least 2 folds")
    try:
        config_files = _config_files(args.config_file)
    except ValueError as error:
        parser.error(str(error))
    ckpt_dir, output_dir = Path(args.ckpt_dir), Path(args.output_dir)
    folds = []
    for fold in range(args.folds):
        folder, logs = ckpt_dir / f"fold{fold}", output_dir / f"fold{fold}"
        model, done = folder / "model.pt", folder / FOLD_FILE
        name = f"fold {fold}/{args.folds}"
        if done.is_file():
            finished = json.loads(done.read_text(encoding="utf-8"))
            if finished.get("n_folds") != args.folds:
                print(f"error: {done}: a fold of a {finished.get('n_folds')}-fold run, not of --folds "
                      f"{args.folds}; use another --ckpt_dir", file=sys.stderr)  # fmt: skip
                return 2
            print(f"{name}: finished earlier ({finished.get('metric')} {finished.get('score')}), skipped", file=sys.stderr)
            folds.append(finished)
            continue
        state = logs / "checkpoint.pt"  # the training state, beside the run's logs
        resume = state.is_file()
        print(f"{name}: {'resuming from ' + str(state) if resume else 'training'}", file=sys.stderr)
        common = [*passed, "--fold", str(fold), "--n_folds", str(args.folds), "--ckpt_dir", str(folder)]
        code = _bundle_run(config_files, [*common, "--output_dir", str(logs), "--resume", "true" if resume else "false"])
        if code == 0 and args.evaluate:
            evaluate = [*config_files, str(BUNDLE_ROOT / "configs" / "evaluate.json")]
            code = _bundle_run(evaluate, [*common, "--output_dir", str(logs / "eval")])
        if code != 0:
            print(f"error: {name} failed (exit {code}); the same command resumes it", file=sys.stderr)
            return code
        finished = {"fold": fold, "n_folds": args.folds, **_record(model)}
        with atomic_open(done, "w", encoding="utf-8") as handle:
            json.dump(finished, handle, indent=4)
        folds.append(finished)
    weights = [float(fold["score"]) for fold in folds] if args.weight_by_score else None
    ensemble = {
        "checkpoints": [f"$@ckpt_dir + '/fold{fold}/model.pt'" for fold in range(args.folds)],
        "ensemble_weights": weights,
        "kfold_folds": folds,
    }
    with atomic_open(ckpt_dir / ENSEMBLE_FILE, "w", encoding="utf-8") as handle:
        json.dump(ensemble, handle, indent=4)
    scores = ", ".join(f"{fold.get('score', float('nan')):.4f}" for fold in folds)
    print(f"{args.folds} folds trained ({scores}); ensemble: {ckpt_dir / ENSEMBLE_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
