"""The tools that run beside the service: ``validate``, ``produce``, ``replay`` and ``demo``.

None of them is imported by the service (``stream/`` at the top); each is one ``dcr-stream``
command and builds its own command-line parser.
"""
