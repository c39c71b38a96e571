"""The tools that run beside the service: ``validate``, ``produce``, ``replay`` and ``demo``.

None of them is imported by the service (``stream/`` at the top); each is one ``dcr-stream``
command and builds its own command-line parser (``add_parser``). What they share has a module of its
own, so that neither ``produce`` nor ``replay`` imports the other: ``kafka`` (connection and topic
helpers), ``progress`` (the status line) and ``args`` (argument types, the usage exit status).
"""
