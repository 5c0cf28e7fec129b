"""The server's packages, and the agent SDK and Larry from their own folders (`sdk/`, `agents/larry/`),
so that `pip install -e .` gives a working tree in one step; each of those two also installs alone
(`pip install ./sdk`, `pip install ./sdk ./agents/larry`). The rest of the metadata is in setup.cfg."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["orchestrator*", "workers*", "web*", "cli*", "migrations*"]),
              "orchestrator_sdk", "larry"],
    package_dir={"orchestrator_sdk": "sdk/orchestrator_sdk", "larry": "agents/larry/larry"},
)
