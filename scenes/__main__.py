"""``python -m segkd.scenes ...`` is ``segkd demo-data ...``."""

from segkd.scenes.street import main

main()
