"""Evaluation against real lesions: per-lesion features, real-data loaders and two-sample comparisons.

A stage of its own (after ``training``, before ``cli``): it measures what the engines produce and what real
datasets hold, on the same grid and with the same code, so synthetic and real lesions are compared like for
like. ``lesion_features`` measures one case; ``datasets`` loads LIDC nodules and labelled nnU-Net raw datasets;
``compare`` tells two feature tables apart (distances, classifier AUC) and ``patches`` checks whether a
detector trained on synthetic lesions finds real ones.
"""
