"""Inference next to a PACS: find new chest radiographs on a DICOMweb server, segment them, store the SEGs back.

    python -m scripts.serving.dicomweb --url http://pacs:8042/dicom-web --output_dir OUT \\
        [--modality CR,DX] [--since 2026-01-01] [--study UID] [--series UID] [--ckpt_dir models] [--override FILE]

One run:

1. searches the server (QIDO-RS) for instances of each modality the input rules admit (``input_rules`` of
   ``configs/inference.json``: CR and DX; ``--modality`` narrows them), of studies from ``--since`` on, in the
   ``--study`` / ``--series`` given, one query per modality, page by page;
2. leaves out what ``OUT/ledger.jsonl`` says is done (``scripts.serving.ledger``), and records as skipped, with
   the reason and without fetching it, what the search's own attributes show the rules leave out (a lateral view);
3. fetches the rest (WADO-RS) in batches of ``--batch_size`` and runs the bundle's inference on each batch
   (``configs/inference.json`` with the overrides, the model built once: ``scripts.serving.bundle_inference``)
   into ``OUT/batches/<time>-<n>/``, a complete inference output folder (``submission.csv``, ``predictions.csv``,
   masks, SEGs, ``skipped.csv``, ``errors.csv``...); the rules are applied again to the fetched headers there;
4. stores each positive image's DICOM SEG (STOW-RS) in the source study: it references the source instance and
   carries the image-level probability in its Segment Description. A negative image has nothing to store; the
   ledger records it with its probability.

Every instance's outcome is appended to the ledger as soon as it is known, so that a rerun (from cron, as a poller)
neither processes nor stores an instance twice, and a run stopped at any point loses nothing it finished. A server
that is down, slow or failing (``scripts.serving.pacs``) is retried with back-off and then stops the run with a
clear error (exit status 1); one instance that cannot be fetched, read or stored is recorded as failed and costs
only itself (``--retry_failed`` tries those again). Credentials come from ``$DICOMWEB_USERNAME`` and
``$DICOMWEB_PASSWORD``, ``$DICOMWEB_TOKEN``, or ``--auth_file`` / ``$DICOMWEB_AUTH_FILE``, never the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pydicom

from scripts.inference.predictions import read_predictions
from scripts.inference.selection import selection_problem
from scripts.serving.label_server import merged_config
from scripts.serving.ledger import Ledger
from scripts.serving.pacs import DicomwebServer, InstanceError, InstanceRef, ServerError, read_credentials
from scripts.utils.files import read_reasons_csv, safe_name, try_lock
from scripts.utils.metadata import BUNDLE_ROOT

__all__ = ["Poll", "known_problem", "main", "query_filters"]

logger = logging.getLogger("scripts.serving.dicomweb")

#: what the search asks for beside the UIDs: the attributes the input rules look at
SEARCH_FIELDS = ("Modality", "ViewPosition", "BodyPartExamined", "NumberOfFrames", "SamplesPerPixel", "StudyDate")
LEDGER = "ledger.jsonl"


def query_filters(modality: str, since: date | None) -> dict[str, str]:
    """QIDO-RS attribute matching for one modality and studies from ``since`` on (``StudyDate`` range ``YYYYMMDD-``)."""
    filters = {"Modality": modality}
    if since is not None:
        filters["StudyDate"] = since.strftime("%Y%m%d") + "-"
    return filters


def known_problem(attributes: pydicom.Dataset, rules: dict) -> str | None:
    """Why the input rules leave out an instance, judged on the attributes a search returned, or None.

    An attribute the server did not return is not held against the instance: its fetched header is judged again.
    """
    rules = dict(rules)
    for keyword, key in (("Modality", "modalities"), ("ViewPosition", "view_positions"),
                         ("BodyPartExamined", "body_parts")):  # fmt: skip
        if keyword not in attributes:
            rules[key] = (*rules[key], "")
    return selection_problem(attributes, **rules)


@dataclass
class Poll:
    """One run's settings and counts (see the module docstring)."""

    server: DicomwebServer
    output_dir: Path
    ckpt_dir: Path
    overrides: Sequence[Path] = ()
    modalities: Sequence[str] = ()
    since: date | None = None
    studies: Sequence[str] = ()
    series: Sequence[str] = ()
    batch_size: int = 16
    retry_failed: bool = False
    keep_inputs: bool = False
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        from monai.bundle import ConfigParser

        self.output_dir = Path(self.output_dir)
        self.ledger = Ledger(self.output_dir / LEDGER, repair=True)  # the caller holds the folder's lock
        rules = ConfigParser(merged_config("inference.json", list(self.overrides))).get_parsed_content("input_rules")
        self.rules = {key: tuple(value) if isinstance(value, (list, tuple)) else value for key, value in rules.items()}
        admitted = [m.upper() for m in self.rules["modalities"]]
        wanted = [m.upper() for m in self.modalities] or admitted
        refused = [m for m in wanted if m not in admitted]
        if refused:
            raise ValueError(f"--modality {','.join(refused)}: the input rules admit only {','.join(admitted)}")
        self.modalities = wanted
        self._pipeline = None

    # -- the run --------------------------------------------------------------------------------------------------

    def run(self) -> Counter:
        """Search, fetch, infer, store; returns the counts. Raises :class:`ServerError` when the server fails."""
        pending = self._store_pending()
        todo = []
        for ref in self._search():
            if ref.sop in pending or self.ledger.is_done(ref.sop, self.retry_failed):
                self.counts["already done"] += 1
                continue
            problem = known_problem(ref.attributes, self.rules)
            if problem:
                self._record(ref, "skipped", reason=problem)
                continue
            todo.append(ref)
        if todo:  # the model, before anything is fetched: a missing or broken one stops the run here
            logger.info("%d new instances; model %s", len(todo), ", ".join(self.pipeline.checkpoints))
        for start in range(0, len(todo), self.batch_size):
            self._batch(todo[start : start + self.batch_size])
        return self.counts

    def _asked_for(self, ref: InstanceRef) -> bool:
        """Whether a search result is what was asked for: a server may ignore a filter it does not support."""
        modality = str(ref.attributes.get("Modality", "") or "").upper()
        if modality and modality not in self.modalities and modality in {m.upper() for m in self.rules["modalities"]}:
            return False  # a modality of the rules that --modality left out
        study_date = str(ref.attributes.get("StudyDate", "") or "")
        if self.since is not None and len(study_date) == 8 and study_date.isdigit():
            return study_date >= self.since.strftime("%Y%m%d")
        return True

    def _search(self) -> Iterable[InstanceRef]:
        seen = set()
        scopes = [("StudyInstanceUID", uid) for uid in self.studies] + [("SeriesInstanceUID", uid) for uid in self.series]
        for modality in self.modalities:
            for scope in scopes or [None]:
                filters = query_filters(modality, self.since)
                if scope:
                    filters[scope[0]] = scope[1]
                for ref in self.server.instances(filters, SEARCH_FIELDS):
                    if ref.sop not in seen and self._asked_for(ref):
                        seen.add(ref.sop)
                        self.counts["found"] += 1
                        yield ref

    def _store_pending(self) -> set[str]:
        """Store the SEGs an earlier run wrote but did not store; the SOPInstanceUIDs of those it could store."""
        stored = set()
        for sop, record in list(self.ledger.states.items()):
            # a SEG written but not stored; with --retry_failed also one whose store failed (the same file again)
            if not (record["status"] == "inferred" or (self.retry_failed and record["status"] == "failed"
                                                       and record.get("seg_file"))):  # fmt: skip
                continue
            seg = self.output_dir / record.get("seg_file", "")
            if not seg.is_file():  # its batch folder is gone: infer it again
                continue
            ref = InstanceRef(record["study"], record["series"], sop, pydicom.Dataset())
            self._store(ref, seg, record.get("probability"), record.get("batch"))
            stored.add(sop)
        return stored

    def _batch(self, refs: list[InstanceRef]) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{len(list((self.output_dir / 'batches').glob('*'))) + 1:05d}"
        incoming, results = self.output_dir / "incoming" / name, self.output_dir / "batches" / name
        incoming.mkdir(parents=True)
        by_file = {}
        try:
            for ref in refs:
                path = incoming / f"{safe_name(ref.sop)}.dcm"
                try:
                    self.server.fetch(ref, path)
                except InstanceError as error:
                    self._record(ref, "failed", reason=str(error))
                    continue
                by_file[path.name] = ref
            if by_file:
                self._infer(incoming, results, by_file, name)
        finally:
            if not self.keep_inputs:
                shutil.rmtree(incoming, ignore_errors=True)
                _remove_if_empty(incoming.parent)

    def _infer(self, incoming: Path, results: Path, by_file: dict[str, InstanceRef], name: str) -> None:
        """Inference on a batch; if it fails as a whole, on each of its instances alone, so that the one that makes
        it fail is recorded as failed and the others are done."""
        try:
            self.pipeline.run(incoming, results)
        except Exception as error:
            if len(by_file) == 1:
                [ref] = by_file.values()
                self._record(ref, "failed", reason=f"inference failed: {type(error).__name__}: {error}", batch=name)
                return
            logger.warning("batch %s failed (%s: %s); its %d instances one by one", name, type(error).__name__,
                           error, len(by_file))  # fmt: skip
            for index, (file_name, ref) in enumerate(sorted(by_file.items())):
                alone = incoming / f"alone-{index}"
                alone.mkdir()
                (incoming / file_name).rename(alone / file_name)
                self._infer(alone, results.with_name(f"{results.name}-{index + 1}"), {file_name: ref},
                            f"{name}-{index + 1}")  # fmt: skip
            return
        self._read_results(results, by_file, name)

    def _read_results(self, results: Path, by_file: dict[str, InstanceRef], batch: str) -> None:
        reasons = {**_reasons(results / "errors.csv", "failed"), **_reasons(results / "skipped.csv", "skipped")}
        predictions = {p.image_id: p for p in read_predictions(results / "predictions.csv")}
        for file_name, ref in by_file.items():
            status_reason = reasons.get(file_name)
            prediction = predictions.get(ref.sop)
            if prediction is None:
                status, reason = status_reason or ("failed", "inference gave no result")
                self._record(ref, status, reason=reason, batch=batch)
                continue
            seg = results / "seg" / f"{safe_name(ref.sop)}.dcm"
            if not prediction.positive:
                self._record(ref, "negative", probability=prediction.probability, batch=batch)
            elif not seg.is_file():
                reason = status_reason[1] if status_reason else "no DICOM SEG was written"
                self._record(ref, "failed", reason=reason, probability=prediction.probability, batch=batch)
            else:
                self._store(ref, seg, prediction.probability, batch)

    def _store(self, ref: InstanceRef, seg: Path, probability: float | None, batch: str | None) -> None:
        seg_file = str(seg.relative_to(self.output_dir))
        details = {"probability": probability, "batch": batch, "seg_file": seg_file}
        self._record(ref, "inferred", **details)
        try:
            uid = self.server.store(seg, ref.study)
        except InstanceError as error:
            self._record(ref, "failed", reason=str(error), **details)
            return
        self._record(ref, "stored", seg_uid=uid, **details)

    def _record(self, ref: InstanceRef, status: str, **details: object) -> None:
        self.ledger.record(ref.sop, ref.study, ref.series, status, **details)
        if status != "inferred":
            self.counts[status] += 1
        if status in ("failed", "skipped"):
            logger.info("%s %s: %s", ref.sop, status, details.get("reason"))

    @property
    def pipeline(self):
        """The model, built on first use (a run with nothing new to do never loads it)."""
        if self._pipeline is None:
            from scripts.serving.bundle_inference import BundleInference

            self._pipeline = BundleInference(self.ckpt_dir, self.overrides)
        return self._pipeline


def _reasons(path: Path, status: str) -> dict[str, tuple[str, str]]:
    """``{file name: (status, reason)}`` of an inference ``errors.csv`` / ``skipped.csv``."""
    return {Path(file).name: (status, reason) for file, reason in read_reasons_csv(path)}


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _lock(output_dir: Path) -> int:
    """Hold ``OUT/.dicomweb.lock`` for the process's life; a second poller on the same folder is refused."""
    output_dir.mkdir(parents=True, exist_ok=True)
    descriptor = try_lock(output_dir / ".dicomweb.lock")
    if descriptor is None:
        raise RuntimeError(f"{output_dir}: another DICOMweb run is using this folder; try again when it ends")
    return descriptor


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _uids(text: str) -> list[str]:
    return [uid.strip() for uid in text.split(",") if uid.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.serving.dicomweb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the DICOMweb service root, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--output_dir", required=True, help="the ledger, the batches' results")
    parser.add_argument("--ckpt_dir", default=str(BUNDLE_ROOT / "models"), help="folder of model.pt")
    parser.add_argument("--override", action="append", default=[], help="config file after inference.json (repeatable)")
    parser.add_argument("--modality", type=_uids, default=[], help="comma-separated, within the input rules' (CR,DX)")
    parser.add_argument("--since", type=_date, help="studies from this date on (YYYY-MM-DD, by StudyDate)")
    parser.add_argument("--study", type=_uids, action="extend", default=[], help="StudyInstanceUID(s), comma-separated")
    parser.add_argument("--series", type=_uids, action="extend", default=[], help="SeriesInstanceUID(s)")
    parser.add_argument("--batch_size", type=int, default=16, help="instances fetched and inferred together")
    parser.add_argument("--retries", type=int, default=4, help="retries of a transient server failure")
    parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the second retry (the first is at once; doubles)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server's answer")
    parser.add_argument("--auth_file", help="JSON file with a token or username and password")
    parser.add_argument("--retry_failed", action="store_true", help="try instances that failed before again")
    parser.add_argument("--keep_inputs", action="store_true", help="keep the fetched DICOMs in OUT/incoming")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # highdicom and the client: warnings only
    logger.setLevel(logging.INFO)
    output_dir = Path(args.output_dir)
    try:
        if args.batch_size < 1:
            raise ValueError("--batch_size must be at least 1")
        server = DicomwebServer(args.url, read_credentials(auth_file=args.auth_file), retries=args.retries,
                                backoff=args.backoff, timeout=args.timeout)  # fmt: skip
        lock = _lock(output_dir)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        poll = Poll(server, output_dir, Path(args.ckpt_dir), [Path(p) for p in args.override], args.modality,
                    args.since, args.study, args.series, args.batch_size, args.retry_failed, args.keep_inputs)  # fmt: skip
    except (ValueError, RuntimeError, OSError) as error:
        os.close(lock)
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        counts = poll.run()
    except Exception as error:
        done = sum(poll.counts[s] for s in ("stored", "negative", "skipped", "failed"))
        text = str(error) if isinstance(error, ServerError) else f"{type(error).__name__}: {error}"
        hint = "run again when the server answers to go on" if isinstance(error, ServerError) else "run again to go on"
        print(f"error: {text}\n{done} instances finished in this run are recorded in {output_dir / LEDGER}; {hint}",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        os.close(lock)
    shown = ", ".join(f"{counts[key]} {key}" for key in
                      ("found", "already done", "stored", "negative", "skipped", "failed"))  # fmt: skip
    print(f"{args.url}: {shown}; ledger {output_dir / LEDGER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
