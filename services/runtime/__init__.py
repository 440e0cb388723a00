"""The runtime side: the SDK a runtime embeds, and simulated runtimes for demos, tests and benches."""
