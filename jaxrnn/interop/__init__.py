"""Interoperability with other frameworks (each imported lazily)."""
