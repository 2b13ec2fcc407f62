"""Training: run-config schema, the resumable (and torchrun-distributed) trainer."""
