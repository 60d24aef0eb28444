"""`python -m fleet`: the same CLI as the hermes-fleet console script."""

from fleet.cli.main import main

if __name__ == "__main__":
    main()
