"""Consumers (pure decide functions + thin NATS adapters), the runtime SDK and `kxr`."""
