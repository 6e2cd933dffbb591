"""``python -m fairsqueeze.cli``: the same as the ``fairsqueeze`` command."""
import sys

from fairsqueeze.cli.main import main

sys.exit(main())
