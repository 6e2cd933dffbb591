"""Shared test helpers (a module, not conftest, so nested conftest files cannot shadow it)."""


def tiny_suite(methods, seeds=(0,), epochs=2, name="tiny"):
    """A seconds-long suite on the file-less digits task with a small MLP."""
    from fairsqueeze.suite import parse_suite

    return parse_suite(
        {
            "name": name,
            "seeds": list(seeds),
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05},
            "tasks": [{"name": "digits", "options": {"target": "parity"}}],
            "models": [{"name": "mlp", "options": {"hidden": [32, 16]}}],
            "methods": methods,
        }
    )
