"""Monitoring: the window over health samples (monitor), the verdict rules (judge) and their statistics."""
