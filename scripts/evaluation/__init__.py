"""Scores and post-processing: the competition metric and its companions, triplet thresholding, the threshold search,
and the reports an evaluation writes."""
