"""Makes the repository root importable so tests can `import reproductions` (not an installed package)."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402
from absl import flags  # noqa: E402

from reproductions.common import SHARED_FLAGS  # noqa: E402  (the flags every script has)


@pytest.fixture
def parse_flags():
    """``parse_flags(*argv, script_flags=())`` -> a private FlagValues with the shared flags (and the named
    script flags, already defined on the global FLAGS) parsed from ``argv``; the global FLAGS stay untouched
    after the test (the shared Flag objects are unparsed)."""
    made = []

    def parse(*argv, script_flags=()):
        fv = flags.FlagValues()
        for name in SHARED_FLAGS + tuple(script_flags):
            fv[name] = flags.FLAGS[name]  # the same Flag object: parsing below sets it, cleanup unparses
        fv(["prog", *argv])
        made.append(fv)
        return fv

    yield parse
    for fv in made:
        fv.unparse_flags()
