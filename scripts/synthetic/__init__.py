"""The synthetic SIIM-ACR dataset generator: ``python -m scripts.synthetic --out DIR --n 200``.

* ``dataset``: the SIIM layout, UIDs, annotation counts and the CSV;
* ``anatomy``: the radiographs and pneumothoraces;
* ``dicom_writer``: SIIM-style Secondary Capture DICOM files.
"""
