"""MONAI transforms and data utilities from DICOM files and SIIM annotations to tensors.

* ``reader``: the DICOM reader (``RadiographReader``);
* ``intensity``: radiographs of any bit depth and photometric interpretation to ``[0, 1]``;
* ``labels``: annotations and label files to masks aligned with the loaded image, and back to RLE (the orientation
  rule lives here);
* ``cache``: the compact forms the cache holds (uint8 images, bit-packed labels);
* ``crop``: the training crop;
* ``sampling``: the positive-share sampler and the per-image seeding of random transforms.
"""
