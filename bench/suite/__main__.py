"""``python -m bench.suite`` is ``python -m bench``: see :mod:`bench.suite.cli`."""

from bench.suite.cli import main

if __name__ == "__main__":
    main()
