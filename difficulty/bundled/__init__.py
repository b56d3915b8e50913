"""The router model shipped with the package (``router-v1.skops``), loaded by default."""
