"""Test-time compute strategies and the selector that picks among them."""
