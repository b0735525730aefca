"""Custom components of the SIIM-ACR pneumothorax segmentation bundle, grouped by role.

* ``siim``: the challenge's formats (RLE, annotation CSVs, the ImageId of a DICOM, datalists); numpy and pydicom only.
* ``data``: MONAI transforms from DICOM and annotations to tensors, the crop, the sampler.
* ``training``: augmentation on the device, the trainer's batch preparation, checkpoints.
* ``evaluation``: metrics, triplet thresholding, the threshold search, reports.
* ``inference``: input scan, engine pieces, checkpoint ensembles, the output writer and its formats.
* ``serving``: servers (MONAI Label).
* ``synthetic``: the synthetic SIIM-format data generator (``python -m scripts.synthetic``).
* ``benchmark``: speed against the model-only ceiling (``python -m scripts.benchmark``).
* ``utils``: small helpers every layer shares (atomic writes, switches, error text, rank 0, bundle metadata).

Configs import them as ``"$import scripts"`` followed by ``"$from scripts.<package>.<module> import <name>"``, or
name them in ``_target_`` (``"scripts.data.labels.LabelToMaskd"``). docs/README.md ("Architecture") shows how
they fit together.
"""
