"""teleconsult: a real-time teleconsultation and remote-ultrasound session server.

The project's folders (signaling/, session/, media/, recording/, turn/, web_client/) stay at
the top of the repository, where readers know them; they are installed as subpackages of this
one name, through the links beside this file, so that none of them claims a generic top-level
name such as `media` or `signaling` in site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("teleconsult")
except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
    __version__ = "0+unknown"
