"""What people do to the log: a producer's request, an operator's action, a trust rotation, offline checks."""
