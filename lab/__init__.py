"""The lab: training and study of the bundled model, offline replays, simulations.

It imports the product (``router``, ``policies``, ``difficulty``, ``backends``) and is never
imported by it; ``pip install .`` leaves it out. ``NOTES.md`` keeps the experiment history.
"""
