"""bstf: batch-size engineering for TensorFlow/Keras."""
import pathlib
import re

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
    r'^__version__ = "([^"]+)"', (_HERE / "bstf" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="bstf",
    version=_VERSION,
    description="Batch-size engineering for TensorFlow/Keras: LR-batch coupling, "
    "noise-scale plans, gradient accumulation on any tf.distribute strategy, "
    "large-batch optimizers and measurement tools.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["bstf", "bstf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "tensorflow-datasets",
        "keras-tuner",
        "absl-py",
        "tensorboard",
        "scipy",
        "numpy",
        "matplotlib",
        "scikit-learn",
        "mnist1d",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "build"],
        "docs": ["mkdocs>=1.5", "mkdocstrings[python]>=0.24"],
    },
    entry_points={"console_scripts": ["bstf=bstf.cli:main"]},
    license="Apache-2.0",
)
