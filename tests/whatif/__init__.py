"""What-if tests: the replay of a recorded run under another policy."""

import contextlib
import warnings

# As in tests/core: a failing hypothesis test imports libcst, whose DeprecationWarning would
# turn the failure report into an INTERNALERROR under filterwarnings = error.
with contextlib.suppress(ImportError), warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import libcst  # noqa: F401
