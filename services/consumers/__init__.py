"""The lifecycle consumers, each a pure decide plus a thin adapter on the reactor (the consumer
framework: reactor, outputs): preparer, distributor, verifier/, activator, monitoring/, promoter,
pinner, guard, notifier/."""
