"""The name fedcore is installed under (``pip install fedcore-tf``); the import name is ``fedcore``.

The name ``fedcore`` on the package index belongs to another project, so the distribution
has its own name; messages that say how to install an extra take it from here.
"""

DIST_NAME = "fedcore-tf"
