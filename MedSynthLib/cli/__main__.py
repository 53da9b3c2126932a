import sys

try:  # the package is already imported (python -m): only main's own start-up is left, and it handles Ctrl-C
    from . import main
except KeyboardInterrupt:  # pragma: no cover - a Ctrl-C in the few milliseconds before main() runs
    import os

    sys.stderr.write("medsynth: cancelled; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)

sys.exit(main())
