"""The SIIM-ACR formats: the RLE, the annotation CSVs, the ImageId of a DICOM, datalists with folds.

This layer needs only numpy and pydicom (no torch, no MONAI), so that light tools and the MONAI Label environment
(pydicom 2, numpy 1.26) import it too.
"""
