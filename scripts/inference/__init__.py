"""Inference over DICOM folders: the input scan, the engine pieces, checkpoint ensembles and TTA, and the writer of
every output (submission CSV, PNG masks, DICOM SEG, overlays, summary, errors)."""
