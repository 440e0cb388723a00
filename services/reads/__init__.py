"""Read models over the log: the follower, live views, watch, audit replay, health reads, snapshots."""
