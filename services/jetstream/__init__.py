"""The service's care of JetStream state beyond the log: pack metadata restored from the log's
record (pack_keeper), foreign consumers removed (janitor). Issue 15 moves the NATS plumbing here."""
