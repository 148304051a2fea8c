"""`python -m osae ...` (and `accelerate launch -m osae ...`) run the osae command line."""

from osae.cli import main

main()
