"""The monitoring window's rules, pure: which samples count for a window (`counts_for`), the figures,
the verdict against the thresholds, and the statistics against the previous pack. The monitor consumer,
pre-flight, `kxr watch` and the dashboard judge a window alike by calling these."""
