import sys

from modtransfer.cli.commands import main

sys.exit(main())
