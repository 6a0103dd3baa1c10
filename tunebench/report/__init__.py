"""The report layer: rebuilds tables, markdown and figures from the run store alone.

``build.build_report`` is the entry point (``tunebench report``); each task's part of the
report is a module in ``sections/``; ``table`` aggregates run records with pandas,
``figures`` draws, ``style`` reads each method's display data from its class, and
``checks`` says which records cannot be trusted.
"""
