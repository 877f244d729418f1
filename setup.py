"""The package list of brasyn's wheel and sdist (the rest of the metadata is in pyproject.toml).

The bundled weights (the demo checkpoints, their manifest, the baselines' numbers) live in the project's
top-level ``weights/`` folder, where the container image and a checkout read them; an installed brasyn
has no such folder beside it, so the wheel carries that folder as the data package ``brasyn.weights.demo``
and ``brasyn.weights.bundled`` finds it through ``importlib.resources``. pyproject.toml cannot add a
package mapped from another folder to the ones it finds, hence this file.
"""

from setuptools import find_packages, setup

BUNDLED_PACKAGE = "brasyn.weights.demo"
BUNDLED_FILES = ["manifest.json", "baselines.json", "README.md", "*.pt"]

setup(
    packages=[*find_packages(include=["brasyn", "brasyn.*"]), BUNDLED_PACKAGE],
    package_dir={BUNDLED_PACKAGE: "weights"},
    package_data={BUNDLED_PACKAGE: BUNDLED_FILES},
)
