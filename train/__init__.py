"""Training: ``python -m train`` (loop.run), checkpoints, DDP helpers, process setup."""
