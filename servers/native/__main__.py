"""`python -m servers.native [--install-to DIR]`: build the native servers (make test, image)."""

from servers.native import main

main()
