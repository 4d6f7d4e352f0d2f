"""The scale-path stack (object store, Redis, Postgres, ...) started from packages on loopback."""
