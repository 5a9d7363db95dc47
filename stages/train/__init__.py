"""Stage two: stream ⨝ store, pseudo-labellers, losses, backbones, the training loop."""
