"""Serve the bundle with MONAI Label on a folder of chest-radiograph DICOMs.

    python -m scripts.serving.label_server --studies /data/siim [--weights models/model.pt] [--port 8000]

It prepares, under ``--workdir`` (default ``runs/label``), without copying or touching the user's files:

* ``studies/``: a flat folder of symbolic links ``<ImageId>.dcm`` (``scripts.siim.image_id``: the SOPInstanceUID)
  to every DICOM under ``--studies`` (a SIIM-layout tree or a flat folder), which is what MONAI Label's local
  datastore reads; its ``labels/`` and
  ``datastore_v2.json`` (MONAI Label's own files) live here too, never in the user's folder;
* ``bundle/``: the bundle that is served: ``configs/inference.json`` and ``configs/train.json`` generated from the
  repository's ``common.json`` + ``inference.json`` / ``train.json`` with any ``--override`` files merged in (paths
  pointing elsewhere dropped), as the single files MONAI Label reads, ``scripts`` linked to
  the repository's package, and ``models/model.pt`` (with its network's record ``model.json`` and
  ``thresholds.json``) copied once from ``--weights`` (training through MONAI Label then replaces it there, and
  the next inference uses it). Where the weights have a record, the served configs' ``network_config`` is the
  network it defines (and ``image_size`` the size it was trained at), so MONAI Label fine-tunes the network the
  weights belong to as they were trained.

``--studies`` can also be a DICOMweb server (``http(s)://.../dicom-web``): then nothing is linked, the app serves
the server's CR/DX series (``label_app/pacs_datastore.py``, with its cache in ``--workdir``), and saved labels go back
to it as DICOM SEG. Credentials: ``$DICOMWEB_USERNAME`` and ``$DICOMWEB_PASSWORD``, or ``--auth_file`` /
``$DICOMWEB_AUTH_FILE`` (``scripts.serving.pacs.read_credentials``); MONAI Label's client takes basic auth only.

Then it replaces itself with ``monailabel start_server`` (from ``--venv``, default ``.venv-label``) on
``127.0.0.1``, offline, so Ctrl-C or SIGTERM stops the server cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pydicom

from scripts.inference.inputs import scan_dicom_inputs
from scripts.networks.definition import IMAGE_SIZE_KEY, record_path, saved_network_config, saved_record
from scripts.siim.image_id import dicom_image_id
from scripts.utils.files import safe_name
from scripts.utils.metadata import BUNDLE_ROOT

__all__ = ["dicomweb_environment", "is_dicomweb", "merged_config", "prepare_bundle", "prepare_studies", "server_command"]

REPO = BUNDLE_ROOT
logger = logging.getLogger(__name__)
#: The model's name in MONAI Label (``/infer/pneumothorax``); the app (``label_app/main.py``) serves it under it.
MODEL_NAME = "pneumothorax"
# ids that point at places of their own: the served bundle keeps its weights and logs inside itself
_PATH_IDS = ("bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "datalist_file")


def prepare_studies(source: str | os.PathLike, studies: str | os.PathLike) -> dict[str, int]:
    """Link every DICOM under ``source`` into the flat folder ``studies`` as ``<ImageId>.dcm``.

    Existing links are refreshed; MONAI Label's files there (labels, datastore) are kept. A file whose header cannot
    be read is not served; two files of one ImageId keep the first (sorted). Returns counts of linked, unreadable and
    duplicate (not linked, logged) and non-DICOM files.
    """
    studies = Path(studies)
    studies.mkdir(parents=True, exist_ok=True)
    scan = scan_dicom_inputs(source, allow_empty=True)
    linked, unreadable, duplicates = 0, 0, 0
    taken: dict[str, Path] = {}
    for path in scan.files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # a broken file must not keep the others out of the datastore
            logger.warning("%s: not served: %s", path, error)
            unreadable += 1
            continue
        image_id = dicom_image_id(path, header=header)
        if image_id in taken:
            logger.warning("%s: not served: ImageId %s already comes from %s", path, image_id, taken[image_id])
            duplicates += 1
            continue
        taken[image_id] = path
        link = studies / f"{safe_name(image_id)}.dcm"
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == path.resolve():
                linked += 1
                continue
            link.unlink()
        link.symlink_to(path.resolve())
        linked += 1
    return {"linked": linked, "unreadable": unreadable, "duplicates": duplicates, "skipped": len(scan.skipped)}


def merged_config(name: str, overrides: list[Path]) -> dict:
    """``configs/common.json`` + ``configs/<name>`` + the overrides that apply to it, as one config."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "common.json"), str(REPO / "configs" / name)])
    for override in overrides:
        content = json.loads(Path(override).read_text())
        for key, value in content.items():
            parent = key.rpartition("#")[0]
            # an override for the other config (a train-only id in inference.json) has nowhere to go
            if key.split("#")[0] not in _PATH_IDS and (not parent or parser.get(parent) is not None):
                parser[key] = value
    return parser.config


def prepare_bundle(bundle: str | os.PathLike, weights: str | os.PathLike | None, overrides: list[Path]) -> Path:
    """Write the served bundle (see the module docstring); ``weights`` is copied only if it has no model yet."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    model = bundle / "models" / "model.pt"
    if not model.is_file():
        if weights is None or not Path(weights).is_file():
            raise FileNotFoundError(
                f"no weights to serve: {weights} does not exist (train the bundle first, or pass --weights)"
            )
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, model)
        # the thresholds evaluation chose, and the record of the network the weights belong to (model.json)
        for source, target in ((Path(weights).parent / "thresholds.json", model.parent / "thresholds.json"),
                               (record_path(weights), record_path(model))):  # fmt: skip
            if source.is_file():
                shutil.copyfile(source, target)
    # the served configs define the network the weights belong to, so MONAI Label's training fine-tunes it
    recorded, trained_size = saved_network_config(model), saved_record(model).get(IMAGE_SIZE_KEY)
    configs = bundle / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for name in ("inference.json", "train.json"):
        config = merged_config(name, overrides)
        if recorded is not None:
            config["network_config"] = recorded
        if name == "train.json" and trained_size is not None:
            config["image_size"] = trained_size  # fine-tuning at the size it was trained at
        ConfigParser.export_config_file(config, str(configs / name), indent=4)
    for name in ("metadata.json", "logging.conf"):
        shutil.copyfile(REPO / "configs" / name, configs / name)
    scripts_link = bundle / "scripts"
    if not scripts_link.is_symlink():
        scripts_link.symlink_to(REPO / "scripts", target_is_directory=True)
    return bundle


def is_dicomweb(studies: str | os.PathLike) -> bool:
    return str(studies).startswith(("http://", "https://"))


def dicomweb_environment(url: str, workdir: Path, auth_file: str | None = None) -> dict[str, str]:
    """The settings MONAI Label and the app read for a DICOMweb datastore at ``url``.

    Raises:
        ValueError: the URL carries credentials, or the credentials are a bearer token (which MONAI Label 0.8.5's
            DICOMweb client cannot send).
    """
    from urllib.parse import urlsplit

    from scripts.serving.pacs import read_credentials

    if urlsplit(url).username or urlsplit(url).password:
        raise ValueError("--studies: credentials do not go in the URL; set $DICOMWEB_USERNAME and $DICOMWEB_PASSWORD")
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(workdir / "dicomweb-cache"), "BUNDLE_PYTHON": sys.executable}
    credentials = read_credentials(auth_file=auth_file)
    if credentials is not None and credentials.token:
        raise ValueError("MONAI Label 0.8.5 sends DICOMweb credentials as basic auth only: give a username and password")
    if credentials is not None:
        env["MONAI_LABEL_DICOMWEB_USERNAME"] = credentials.username
        env["MONAI_LABEL_DICOMWEB_PASSWORD"] = credentials.password
    return env


def server_command(venv: Path, studies: Path | str, bundle: Path, host: str, port: int,
                   extra_env: dict[str, str] | None = None) -> tuple[list[str], dict]:  # fmt: skip
    """The ``monailabel start_server`` command line and environment."""
    env = dict(os.environ)
    env["MONAI_LABEL_DATASTORE_FILE_EXT"] = '["*.dcm","*.nii.gz"]'
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join([str(bundle), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # the `monailabel` launcher is a shell script that runs whatever `python` comes first on PATH
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env.pop("VIRTUAL_ENV", None)
    command = [
        str(venv / "bin" / "python"),
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(REPO / "label_app"),
        "--studies",
        str(studies),
        "--conf",
        "bundle_path",
        str(bundle),
        "--conf",
        "zoo_source",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    return command, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", required=True,
                        help="folder of DICOMs (SIIM tree or flat), one file, or a DICOMweb URL")  # fmt: skip
    parser.add_argument("--auth_file", help="DICOMweb credentials file (JSON username and password)")
    parser.add_argument("--weights", default=str(REPO / "models" / "model.pt"), help="state dict to serve first")
    parser.add_argument("--override", action="append", default=[], help="config override file (repeatable)")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "label"))
    parser.add_argument("--venv", default=str(REPO / ".venv-label"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--prepare_only", action="store_true", help="prepare the folders, do not start the server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(args.workdir).resolve()
    extra_env = {}
    if is_dicomweb(args.studies):
        try:
            extra_env = dicomweb_environment(args.studies, workdir, args.auth_file)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        studies = args.studies
        print(f"studies: the CR/DX series of the DICOMweb server {studies}")
    else:
        studies = workdir / "studies"
        counts = prepare_studies(args.studies, studies)
        print(
            f"studies: {counts['linked']} DICOMs linked in {studies} ({counts['unreadable']} unreadable, {counts['duplicates']} duplicate ImageIds, "
            f"{counts['skipped']} non-DICOM files skipped)"
        )
    bundle = prepare_bundle(workdir / "bundle", args.weights, [Path(p) for p in args.override])
    print(f"served bundle: {bundle}")
    command, env = server_command(Path(args.venv), studies, bundle, args.host, args.port, extra_env)
    if args.prepare_only:
        print(" ".join(command))
        return 0
    if not Path(command[0]).is_file():
        print(f"{command[0]} not found: run `make setup-label` first", file=sys.stderr)
        return 2
    print(f"MONAI Label on http://{args.host}:{args.port} (model '{MODEL_NAME}'); Ctrl-C stops it")
    sys.stdout.flush()
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
