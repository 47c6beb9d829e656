"""The REST service: ``create_app(app)`` and ``dspex serve``. Needs the ``server`` extra (FastAPI).

Only this package imports FastAPI; ``import dspex`` never loads it.
"""

from dspex.server.app import ServiceOptions, create_app

__all__ = ["ServiceOptions", "create_app"]
