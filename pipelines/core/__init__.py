"""The foundations every stage stands on: configuration (`params.yaml`), settings (the
environment), storage through URIs, storage layouts, dates, task contracts and orchestration
defaults. Light: imported by DAG files at parse time, so only the standard library, yaml and
pydantic at module level."""
