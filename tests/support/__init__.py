"""What the tests and the benchmarks share: a pytest plugin, one module per concept.

``tests/conftest.py`` loads each module below as a plugin (``pytest_plugins``), which registers its
fixtures and hooks; test modules and ``bench/`` import the plain helpers from the same modules.
Nothing here imports from a test module or from ``bench/``.

- ``waiting``: ``wait_until`` (and its coroutine twin): poll a condition until a deadline.
- ``kafka``: the session broker (``kafka``), topic, group, producer and consumer factories; reading
  a topic back, a group's committed offsets.
- ``events``: the call intents tests produce, valid and invalid, and the ``Ledger`` that produces
  them and remembers what must become of each one.
- ``sandbox``: the API stand-in in the test's loop (``sandbox_factory``) or on a thread of its own
  (``sandbox_thread``).
- ``service``: ``dcr-stream run`` as a process (``service_factory``), its log, port and metrics.
- ``statuses``: events to receivers the sandbox reports failed, and the outcomes the service
  reported for them (reconciliation; plain helpers, no fixtures).
- ``scenario``: an end-to-end test's set-up in one call (``scenario``): a fresh topic and group,
  the sandbox (fast, or at the API's documented limits), the ``Ledger``, the service; and the
  fault scenarios' sizes and deadline (``DCR_SOAK=1``).
- ``verifier``: the zero-loss verifier: what a ``Ledger`` produced against what the API accepted,
  the DLQ holds and the group committed (plain helpers, no fixtures).
- ``helm``: the chart tests' helm binary and renders.

The benchmarks import from here (``bench`` runs from the repository root, where ``tests`` is a
package), so a benchmark starts its broker, produces, waits and runs the service exactly as the
tests do; pytest is then imported but never run.
"""
