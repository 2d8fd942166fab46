"""lmdelta: find out what changed between language models.

One module per stage (``corpus``, ``models``, ...) plus shared ones (``artifacts`` for atomic writes and
provenance, ``config`` for the validated configuration). Importing the package is cheap: heavy
libraries (torch, transformers) are imported inside the functions that need them, so the Snakefile
can import ``lmdelta.config`` and answer ``snakemake -n`` quickly.
"""

__version__ = "0.1.0"


class LmdeltaError(Exception):
    """A problem the user can fix. Its message is one line: what is wrong, and what to do."""
