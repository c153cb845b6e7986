"""The one exception a refused archive raises."""


class ArchiveRejected(ValueError):
    """The archive is not one this service reads; the message names the member or node and the reason (a 422)."""
