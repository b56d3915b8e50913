"""Verifiers: exact checkers and learned reward models behind one interface."""

from backends.verifiers.base import ProcessVerifier, Verifier, VerifierError

__all__ = ["ProcessVerifier", "Verifier", "VerifierError"]
