"""Registered components; each submodule registers itself on import."""
