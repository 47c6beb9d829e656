"""A module whose own import fails: it needs a package that is not installed."""

import dspex_missing_dependency  # type: ignore[import-not-found]  # the point of this module  # noqa: F401
