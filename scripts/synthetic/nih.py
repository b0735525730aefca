"""``python -m scripts.synthetic.nih``: a small synthetic data set in the layout of NIH ChestX-ray14
(``scripts.nih.datalist``): 8-bit grey PNG radiographs named ``<patient>_<follow-up>.png`` in ``images/``,
``Data_Entry_2017.csv`` with its columns, and the official-style ``train_val_list.txt`` / ``test_list.txt``
(patient-disjoint). The radiographs are the SIIM generator's (``scripts.synthetic.anatomy``); an image with
``Pneumothorax`` among its findings shows one, others may list other findings, which are not drawn.
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from scripts.synthetic.anatomy import render_case
from scripts.utils.files import atomic_open

__all__ = ["FINDINGS", "HEADER", "generate_nih"]

#: The 14 findings of ChestX-ray14.
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
            "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")  # fmt: skip
#: ``Data_Entry_2017.csv``'s header as NIH ships it (two of its names hold a comma, and it ends with one).
HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position," \
         "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"


def _image(job: tuple) -> tuple[str, str, int, int, int, str, str]:
    out, seed, index, patient, follow_up, size, positive_share, lesion_contrast, lesion_scale = job
    rng = np.random.default_rng([seed, 7, index])
    positive = bool(rng.random() < positive_share)
    pixels, _ = render_case(rng, rows=size, cols=size, n_regions=int(positive) * int(rng.integers(1, 3)),
                            lesion_contrast=lesion_contrast, lesion_scale=lesion_scale)  # fmt: skip
    others = [name for name in FINDINGS[:-1] if rng.random() < 0.06]
    findings = "|".join(sorted(others + (["Pneumothorax"] if positive else []))) or "No Finding"
    name = f"{patient:08d}_{follow_up:03d}.png"
    from PIL import Image

    with atomic_open(Path(out) / "images" / name, "wb") as handle:
        Image.fromarray(_to_uint8(pixels), mode="L").save(handle, format="PNG")
    view = str(rng.choice(["PA", "AP"], p=[0.6, 0.4]))
    person = np.random.default_rng([seed, 10, patient])  # age and sex are the patient's, on every film
    return name, findings, follow_up, patient, int(person.integers(10, 80)) + follow_up // 4, str(person.choice(["M", "F"])), view


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    low, high = float(pixels.min()), float(pixels.max())
    return np.round((pixels.astype(np.float64) - low) / max(high - low, 1e-9) * 255).astype(np.uint8)


def generate_nih(
    out: str | Path, n: int = 200, seed: int = 0, size: int = 256, positive_share: float = 0.3, test_share: float = 0.2,
    lesion_contrast: float = 1.0, lesion_scale: float = 1.0, workers: int = 1,
) -> list[tuple]:
    """Write ``n`` images in the NIH layout into ``out``; returns the CSV rows (deterministic in ``seed``)."""
    if not 0.0 <= positive_share <= 1.0 or not 0.0 <= test_share < 1.0:
        raise ValueError("positive_share lies in [0, 1] and test_share in [0, 1)")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 8])
    jobs, patient, follow_up = [], 1, 0
    for index in range(n):
        jobs.append((str(out), seed, index, patient, follow_up, size, positive_share, lesion_contrast, lesion_scale))
        if rng.random() < 0.6:  # most patients have one or two films
            patient, follow_up = patient + 1, 0
        else:
            follow_up += 1
    if workers > 1 and n > 8:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_image, jobs, chunksize=4))
    else:
        rows = [_image(job) for job in jobs]
    with atomic_open(out / "Data_Entry_2017.csv", "w", newline="", encoding="utf-8") as handle:
        handle.write(HEADER + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        for name, findings, follow, patient_id, age, sex, view in rows:
            writer.writerow([name, findings, follow, patient_id, age, sex, view, size, size, 0.143, 0.143])
    patients = sorted({row[3] for row in rows})
    test_patients = set(np.random.default_rng([seed, 9]).permutation(patients)[: int(round(test_share * len(patients)))].tolist())
    for list_name, wanted in (("train_val_list.txt", False), ("test_list.txt", True)):
        with atomic_open(out / list_name, "w", encoding="utf-8") as handle:
            handle.writelines(f"{row[0]}\n" for row in rows if (row[3] in test_patients) == wanted)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.synthetic.nih", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=200, help="images (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="square side in pixels (NIH's are 1024)")
    parser.add_argument("--positive_share", type=float, default=0.3, help="share with Pneumothorax (NIH: 0.047)")
    parser.add_argument("--test_share", type=float, default=0.2, help="share of patients in test_list.txt")
    parser.add_argument("--lesion_contrast", type=float, default=1.0)
    parser.add_argument("--lesion_scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    rows = generate_nih(args.out, n=args.n, seed=args.seed, size=args.size, positive_share=args.positive_share,
                        test_share=args.test_share, lesion_contrast=args.lesion_contrast,
                        lesion_scale=args.lesion_scale, workers=args.workers)  # fmt: skip
    positives = sum("Pneumothorax" in row[1] for row in rows)
    print(f"{args.out}: {len(rows)} PNG radiographs ({positives} with Pneumothorax), Data_Entry_2017.csv, lists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
