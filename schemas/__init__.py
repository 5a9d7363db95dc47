"""On-disk contracts between the stages: prepared dataset, pseudo-label store, run folder."""
