"""`python -m fleet`: the same CLI as the hermes-fleet console script."""

from fleet.cli.main import console

if __name__ == "__main__":
    console()
