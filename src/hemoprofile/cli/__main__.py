"""python -m hemoprofile.cli"""

import sys

from hemoprofile.cli.main import main

sys.exit(main())
