"""The training loop and what it needs: parallel set-up, optimizer, step, evaluation, logging."""
