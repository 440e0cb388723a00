"""NATS and JetStream plumbing: the client, pull/direct/ordered reads, the log writer, the layout of
streams and consumers, the pack store, the embedded server, dead letters, and the service's care of
JetStream state beyond the log (pack_keeper restores pack metadata, janitor removes foreign consumers)."""
