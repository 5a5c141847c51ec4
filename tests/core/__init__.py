"""Engine and core tests."""

import contextlib
import warnings

# When a hypothesis test fails, its pytest plugin imports libcst to suggest a patch; libcst
# imports mypy_extensions.TypedDict, whose DeprecationWarning (an error under our
# filterwarnings) would turn the failure report into an INTERNALERROR that ends the session.
# Importing it once here, quietly, keeps failures reported as failures.
with contextlib.suppress(ImportError), warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import libcst  # noqa: F401
