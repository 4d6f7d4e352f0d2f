"""All logic of the ML lifecycle: every stage is a typed function plus a CLI entry point.

Nothing in this package knows which dataset it runs on: that is configuration
(`params.yaml`, `feature_repo/`, `expectations/`).
"""
