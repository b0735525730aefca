"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal radiographs as PNG with image-level findings, the
data the image-level classifier (``configs/classifier.json``) can learn "pneumothorax or not" from."""
