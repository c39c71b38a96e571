"""The suite's fixtures and hooks live in ``tests/support`` (see its ``__init__``), loaded here as
pytest plugins; test modules import the plain helpers from the same modules."""

pytest_plugins = [
    "tests.support.summary",  # first: the others import it
    "tests.support.helm",
    "tests.support.kafka",
    "tests.support.sandbox",
    "tests.support.service",
    "tests.support.scenario",
]
