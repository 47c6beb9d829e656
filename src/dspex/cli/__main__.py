"""``python -m dspex.cli``: the same as the ``dspex`` command."""

from dspex.cli import main

main()
