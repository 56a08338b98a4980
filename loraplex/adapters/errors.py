"""Exceptions of the registry, grouped so that the HTTP layer can map each family to one status.

`ValueError` subclasses are the caller's fault (HTTP 400, or 409/413 where said); `LookupError`
subclasses mean "not found for this tenant" (404, never 403); `AdapterFetchError` means the bytes
of a registered adapter could not be brought to the engine (503).
"""

from __future__ import annotations


class NotFoundError(LookupError):
    """A tenant, key, adapter or version does not exist (or not for the asking tenant)."""


class ConflictError(ValueError):
    """The name is taken, or the resource is in a state that forbids the change (HTTP 409)."""


class QuotaExceededError(ValueError):
    """A tenant quota would be exceeded: too many adapters or too large an upload (HTTP 413)."""


class TenantDisabledError(ValueError):
    """The tenant is disabled and may not use or change anything (HTTP 403 for its own keys)."""


class AdapterFetchError(RuntimeError):
    """A registered adapter version could not be fetched, verified or loaded."""
