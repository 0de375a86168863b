"""The audit of a labelled folder: which labels look wrong, which images are copies, which fit no class.

Typed arguments only (``imgclf.tasks.audit_task`` reads the config). In call order:

- ``folds``: the stratified, seeded K-fold plan, and out-of-fold probabilities from any per-fold trainer;
- ``heads``: the per-fold trainer of the fast path, a head fitted on cached frozen-backbone features;
- ``issues``: label issues ranked by cleanlab;
- ``duplicates``: exact byte copies and near-duplicates (cosine similarity of the embeddings, chunked);
- ``outliers``: images unlike any class (cleanlab's kNN out-of-distribution score on the embeddings);
- ``gallery`` and ``summary``: the pictures and ``summary.md``; ``files``: the CSVs.
"""
